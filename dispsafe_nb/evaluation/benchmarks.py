"""The named evaluation sets (benchmarks) and their prompt records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispsafe_nb import data

SYSTEM_REFUSAL: Any = (
    object()
)  # default of `evaluate(refusal_text=)`: the system's own y_r, else DEFAULT_REFUSAL


@dataclass(frozen=True)
class Benchmark:
    """A named prompt set: dataset, split, and what kind of behaviour it measures."""

    name: str
    dataset: str
    split: str | None
    kind: str  # "harmful" (SGS), "borderline" (over-refusal), "benign" (compliance), "verifiable" (accuracy)
    default_limit: int | None = None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("advbench_test", "advbench", "test", "harmful"),
        Benchmark("jbb_harmful", "jbb_harmful", None, "harmful"),
        Benchmark("bundled_harmful_test", "bundled_harmful", "test", "harmful"),
        Benchmark("xstest_safe", "xstest_safe", None, "borderline"),
        Benchmark("bundled_borderline_test", "bundled_borderline", "test", "borderline"),
        Benchmark("jbb_benign", "jbb_benign", None, "benign"),
        Benchmark("alpaca_test", "alpaca", "test", "benign", default_limit=200),
        Benchmark("bundled_verifiable_test", "bundled_verifiable", "test", "verifiable"),
        # Out of distribution in form (the generalisation sets): XSTest's unsafe contrasts (questions), the
        # project's requests in seven phrasing forms (per_form breaks them down), and jailbreak-wrapped requests.
        Benchmark("xstest_unsafe", "xstest_unsafe", None, "harmful"),
        Benchmark("bundled_forms_test", "bundled_harmful_forms", "test", "harmful"),
        Benchmark("bundled_forms_borderline_test", "bundled_borderline_forms", "test", "borderline"),
        Benchmark("jailbreak_wrapped", "bundled_jailbreak_wrapped", None, "harmful"),
    ]
}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_records(name: str, limit: int | None = None, seed: int = 0) -> list[data.PromptRecord]:
    """The prompts of a benchmark (at most `limit`, else its default limit), deterministic under `seed`."""
    spec = benchmark(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for the benchmark's default), not {limit}")
    return data.load_dataset(
        spec.dataset, split=spec.split, limit=spec.default_limit if limit is None else limit, seed=seed
    )
