"""The safe LLM system (the teacher): an LLM whose answers a guard replaces by a refusal when unsafe."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispsafe_nb.core.decoding import DEFAULT_BATCH_SIZE, DecodingConfig
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL, SAFE_THRESHOLD, Guard


@dataclass(frozen=True)
class SafeSystemOutput:
    prompt: str
    response: str  # what the LLM said
    alpha: float  # guard's p(safe | prompt, response)
    final: str  # what the system returns: response or the refusal

    @property
    def replaced(self) -> bool:
        return self.final != self.response


@dataclass
class SafeSystem:
    """LLM + guard. mode="threshold" refuses when α < threshold; mode="sample" keeps y with probability α
    (the stochastic system of the paper's formula; seeded)."""

    llm: LLM
    guard: Guard
    refusal: str = DEFAULT_REFUSAL
    threshold: float = SAFE_THRESHOLD
    mode: str = "threshold"

    def __post_init__(self) -> None:
        if self.mode not in {"threshold", "sample"}:
            raise ValueError(f"mode must be 'threshold' or 'sample', not {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], not {self.threshold}")

    def respond(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        per_prompt_seed: bool = False,
    ) -> list[SafeSystemOutput]:
        """Full trace per prompt: the LLM's answer, α, and the final output."""
        decoding = decoding or DecodingConfig()
        prompts = list(prompts)
        responses = self.llm.generate(
            prompts,
            decoding=decoding,
            batch_size=batch_size,
            progress=progress,
            per_prompt_seed=per_prompt_seed,
        )
        return self.apply_guard(prompts, responses, decoding.seed)

    def apply_guard(
        self, prompts: Sequence[str], responses: Sequence[str], seed: int = 0
    ) -> list[SafeSystemOutput]:
        """The guard's part on answers already given: α for each (prompt, response) and what the system returns
        (the response, or y_r); `seed` drives the coins of mode "sample", drawn in order."""
        alphas = self.guard.prob_safe(list(prompts), list(responses)).tolist()
        rng = random.Random(seed)
        return [
            SafeSystemOutput(
                prompt, response, float(alpha), response if self._keeps(alpha, rng) else self.refusal
            )
            for prompt, response, alpha in zip(prompts, responses, alphas, strict=True)
        ]

    def _keeps(self, alpha: float, rng: random.Random) -> bool:
        """Does the system return the LLM's answer (else y_r)? α ≥ threshold, or a coin with probability α."""
        return alpha >= self.threshold if self.mode == "threshold" else rng.random() < alpha

    def generate(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        num_samples: int = 1,
        per_prompt_seed: bool = False,
    ) -> list[str] | list[list[str]]:
        """The common system interface: one final answer per prompt (`num_samples` > 1: that many per prompt,
        each the system's output for its own base sample)."""
        if num_samples == 1:
            return [
                o.final
                for o in self.respond(
                    prompts,
                    decoding=decoding,
                    batch_size=batch_size,
                    progress=progress,
                    per_prompt_seed=per_prompt_seed,
                )
            ]
        decoding = decoding or DecodingConfig()
        prompts = list(prompts)
        gens = self.llm.generate(
            prompts,
            decoding=decoding,
            batch_size=batch_size,
            num_samples=num_samples,
            progress=progress,
            per_prompt_seed=per_prompt_seed,
        )
        flat = [y for ys in gens for y in ys]
        outputs = self.apply_guard([p for p in prompts for _ in range(num_samples)], flat, decoding.seed)
        finals = [o.final for o in outputs]
        return [finals[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]

    def describe(self) -> dict[str, Any]:
        return {
            "system": "dual",
            "model": self.llm.describe(),
            "guard": self.guard.describe(),
            "refusal": self.refusal,
            "threshold": self.threshold,
            "mode": self.mode,
        }
