"""Guards: models of α(x, y) = p(safe | prompt x, response y), the teacher's safety judgement.

Every guard answers `prob_safe(prompts, responses) -> tensor`. Two implementations:

* `EmbeddingGuard` (offline default): MiniLM-L6 sentence embeddings and two small trained heads, combined by the
  factorisation  p(unsafe | x, y) = p(harmful | x) · p(complies | y).
  Why factorise? An exchange is unsafe exactly when a harmful request meets a compliant answer. Each factor can be
  learned from data this project can hold: labelled *requests* (public benchmarks plus our bundled set) and
  refusal vs. compliant *answers* — we never need (or write) harmful answers. A joint head over (x, y) would need
  harmful completions as positives. The price: the guard cannot see harm that lives only in the answer.
* `LlamaGuard`: any HF generative guard in the Llama-Guard style; α = p("safe") against p("unsafe") as the first
  token the guard would generate under its own chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."
# The deployed decision: an exchange with α(x, y) >= SAFE_THRESHOLD is kept (the dual system, the "deployed" teacher,
# the guard judge); one home for it, passed through wherever a system's threshold is not at hand.
SAFE_THRESHOLD = 0.5


@runtime_checkable
class Guard(Protocol):
    """Anything that scores exchanges: α(x, y) = p(safe | x, y), one value per (prompt, response) pair."""

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt"
        )
    return prompts, responses
