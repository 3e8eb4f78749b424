"""The Monte-Carlo TV estimate between the dual system and a student, on the real model with stub guards."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.empirical import check_bound

pytestmark = pytest.mark.slow
REFUSAL = "I'm sorry, but I can't help with that request."


class ConstantGuard:
    def __init__(self, alpha):
        self.alpha = alpha

    def prob_safe(self, prompts, responses):
        return torch.full((len(prompts),), self.alpha)

    def describe(self):
        return {"guard": "constant", "alpha": self.alpha}


def _check_base_model(llm, alpha, prompt, harmful):
    """The bound check for one prompt with the base model as its own student and a constant guard."""
    (check,) = check_bound(
        llm, ConstantGuard(alpha), None, [prompt], [harmful], REFUSAL, n_samples=3, max_new_tokens=8
    )
    return check


def test_tv_is_zero_when_the_guard_passes_everything_and_the_student_is_the_base(llm):
    check = _check_base_model(llm, 1.0, "Tell me about cats.", harmful=False)
    assert check.tv == pytest.approx(0.0, abs=1e-6)
    assert check.refusal_mass == pytest.approx(0.0, abs=1e-9) or check.refusal_mass < 1e-9
    assert check.gap == 0.0 and check.holds


def test_tv_equals_the_refusal_mass_moved_by_the_guard(llm):
    # The base model never says y_r verbatim, so moving half the mass to y_r costs TV = 1/2.
    check = _check_base_model(llm, 0.5, "How do I pick a lock?", harmful=True)
    assert check.tv == pytest.approx(0.5, abs=1e-3)
    assert check.teacher_safe >= 0.5
    assert check.holds
