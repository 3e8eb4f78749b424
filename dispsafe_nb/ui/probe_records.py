"""What a probe is asked and what it returns: `ProbeDecoding` (how every system decodes, checked), `SystemAnswer`
(one system on one prompt) and `ProbeResult` (tables and metrics of a whole call). `prober.probe` fills them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from dispsafe_nb.core.decoding import PROBING_DECODING, TEACHER_DECODING, DecodingConfig

MAX_NEW_TOKENS_LIMIT = 512
MAX_SAMPLES = 32


class ProbeInputError(ValueError):
    """The request cannot be probed as given (empty or over-long prompt, no or unknown system, bad decoding);
    the message says what to change."""


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeDecoding:
    """How every selected system decodes. mode "greedy" gives one answer per prompt; "sampled" gives `k` answers
    drawn at `temperature` (each (prompt, sample) row from its own seeded stream, so reruns repeat)."""

    mode: str = "greedy"
    temperature: float = TEACHER_DECODING.temperature
    max_new_tokens: int = PROBING_DECODING.max_new_tokens
    k: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("greedy", "sampled"):
            raise ProbeInputError(f"decoding mode must be 'greedy' or 'sampled', not {self.mode!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ProbeInputError(
                f"max new tokens must lie in 1..{MAX_NEW_TOKENS_LIMIT}, not {self.max_new_tokens}"
            )
        if not 1 <= self.k <= MAX_SAMPLES:
            raise ProbeInputError(f"k samples must lie in 1..{MAX_SAMPLES}, not {self.k}")
        if self.mode == "greedy" and self.k != 1:
            raise ProbeInputError(
                "greedy decoding gives one answer per prompt: set k = 1 or choose 'sampled'"
            )
        if self.mode == "sampled" and not 0.0 < self.temperature <= 2.0:
            raise ProbeInputError(f"sampling needs a temperature in (0, 2], not {self.temperature}")

    def to_decoding(self) -> DecodingConfig:
        temperature = 0.0 if self.mode == "greedy" else self.temperature
        return DecodingConfig(max_new_tokens=self.max_new_tokens, temperature=temperature, seed=self.seed)


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SystemAnswer:
    """One system's behaviour on one prompt."""

    system: str
    prompt: str
    answers: list[str]
    alphas: list[float]  # teacher guard's α(x, y) for each answer shown
    verdicts: dict[str, list[bool]]  # judge -> refused (string rules) / safe (second judge), per answer
    refused: list[bool]  # refused by either string rule, per answer
    latency_s: float  # wall time to answer this prompt (the batch's time / its prompts); dual: LLM + guard
    llm_answers: list[str] | None = None  # dual only: what the LLM said before the guard
    llm_alphas: list[float] | None = None  # dual only: α of those answers (what decided a replacement)
    # log q(y_r | x) and log q(y_base | x) at temperature 1 (the model's own distribution, which training fits) for
    # the frozen LLM with its method (none for the base model); None for the dual system (a mixture)
    logq_refusal: float | None = None
    logq_base_answer: float | None = None  # y_base: the base model's greedy answer, scored as generated

    @property
    def refusal_rate(self) -> float:
        return sum(self.refused) / len(self.refused)

    @property
    def mean_alpha(self) -> float:
        return sum(self.alphas) / len(self.alphas)

    @property
    def replaced(self) -> list[bool] | None:
        if self.llm_answers is None:
            return None
        return [a != y for a, y in zip(self.answers, self.llm_answers, strict=True)]


@dataclass
class ProbeResult:
    """Everything one probe call produced: answers per (prompt, system), errors per system, the config."""

    prompts: list[str]
    systems: list[str]
    decoding: ProbeDecoding
    refusal: str
    answers: list[SystemAnswer] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # system -> why it could not run
    base_answers: list[str] = field(default_factory=list)  # y_base per prompt (greedy)

    def answer(self, system: str, prompt: str) -> SystemAnswer:
        for a in self.answers:
            if a.system == system and a.prompt == prompt:
                return a
        raise KeyError(f"no answer of {system!r} to {prompt!r}")

    def table(self) -> pd.DataFrame:
        """One row per (prompt, system): refusal rate over the samples, mean α, log q(y_r|x), latency."""
        rows = [
            {
                "prompt": a.prompt,
                "system": a.system,
                "k": len(a.answers),
                "refusal_rate": a.refusal_rate,
                "mean_alpha": a.mean_alpha,
                "logq_refusal": a.logq_refusal,
                "q_refusal": None if a.logq_refusal is None else math.exp(a.logq_refusal),
                "logq_base_answer": a.logq_base_answer,
                "latency_s": a.latency_s,
            }
            for a in self.answers
        ]
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """One row per system: prompts, refusal rate, mean α, mean log q(y_r|x), total latency."""
        table = self.table()
        if table.empty:
            return table
        grouped = table.groupby("system", sort=False)
        out = grouped.agg(
            prompts=("prompt", "count"),
            refusal_rate=("refusal_rate", "mean"),
            mean_alpha=("mean_alpha", "mean"),
            mean_logq_refusal=("logq_refusal", "mean"),
            latency_s=("latency_s", "sum"),
        )
        return out.reindex([s for s in self.systems if s in out.index])

    def to_metrics(self) -> dict[str, Any]:
        """JSON-able numbers per system (what notebooks emit and checks read)."""
        summary = self.summary()
        per_system = {
            system: {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
            for system, row in summary.iterrows()
        }
        return {
            "systems": per_system,
            "errors": dict(self.errors),
            "n_prompts": len(self.prompts),
            "decoding": asdict(self.decoding),
        }
