"""The Monte-Carlo TV estimate between the dual system and a student, on the real model with stub guards."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.evaluation.tv_bound_estimate import check_bound

pytestmark = pytest.mark.slow
REFUSAL = "I'm sorry, but I can't help with that request."


class ConstantGuard:
    def __init__(self, alpha):
        self.alpha = alpha

    def prob_safe(self, prompts, responses):
        return torch.full((len(prompts),), self.alpha)

    def describe(self):
        return {"guard": "constant", "alpha": self.alpha}


def _check_base_model(llm, alpha, prompt, harmful, temperature=1.0, top_p=1.0, n_samples=3):
    """The bound check for one prompt with the base model as its own student and a constant guard; the teacher
    samples the base model at `temperature` / `top_p` (1.0: the student's own distribution)."""
    (check,) = check_bound(
        llm,
        ConstantGuard(alpha),
        None,
        [prompt],
        [harmful],
        REFUSAL,
        n_samples=n_samples,
        max_new_tokens=8,
        teacher_temperature=temperature,
        teacher_top_p=top_p,
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
    # teacher safety = half refusals (safe) + half its answers' own safety, exactly; likewise refusals
    assert check.teacher_safe == pytest.approx(0.5 + 0.5 * check.teacher_answers_safe, abs=1e-12)
    assert check.gap == pytest.approx(abs(check.teacher_safe - check.student_safe), abs=1e-12)
    assert check.teacher_refusal >= 0.5 and check.refusal_gap == pytest.approx(
        abs(check.teacher_refusal - check.student_refusal), abs=1e-12
    )
    assert check.holds and check.refusal_holds


def test_a_guard_that_refuses_everything_makes_the_teacher_always_safe(llm):
    check = _check_base_model(llm, 0.0, "How do I pick a lock?", harmful=True)
    assert check.teacher_safe == 1.0 and check.refusal_mass == 1.0
    assert check.tv == pytest.approx(1.0, abs=1e-3)  # the base model all but never says y_r verbatim
    assert check.gap == pytest.approx(1.0 - check.student_safe, abs=1e-12) and check.holds


def test_a_tempered_teacher_is_another_distribution_than_the_student(llm):
    # Same model, same guard passing everything: only the teacher's decoding differs. At the training teacher's
    # temperature 0.7 and nucleus 0.95 the base model is sharper than at 1, so TV > 0; at 1 / 1 it is 0.
    same = _check_base_model(llm, 1.0, "Tell me about cats.", harmful=False, n_samples=4)
    tempered = _check_base_model(
        llm, 1.0, "Tell me about cats.", harmful=False, temperature=0.7, top_p=0.95, n_samples=4
    )
    assert same.tv == pytest.approx(0.0, abs=1e-6)
    assert tempered.tv > 0.05 and tempered.holds and tempered.refusal_holds


def test_summary_counts_only_informative_prompts_where_the_bound_could_fail():
    from dispsafe_nb.evaluation.tv_bound_estimate import BoundCheck, summarise

    def check(tv, gap):
        return BoundCheck(
            "x", tv=tv, tv_se=0.0, gap=gap, gap_se=0.0, teacher_safe=1.0, student_safe=0.0, refusal_mass=1.0
        )

    found = [check(1.0, 1.0), check(0.2, 0.5), check(0.3, 0.1)]  # vacuous; violated; holds
    out = summarise(found)
    assert out["real_informative_prompts"] == 2
    assert out["real_bound_holds_fraction_informative"] == 0.5
    assert out["real_bound_holds_fraction"] == pytest.approx(2 / 3)
    assert out["real_max_gap_minus_tv"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no bound checks"):
        summarise([])
