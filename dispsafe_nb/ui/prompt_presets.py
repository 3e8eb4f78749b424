"""Prompt presets for the prober: evaluation prompts by benchmark and category (test splits only: nothing a
student trained on), and notebook 06's fixed probing list.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispsafe_nb.data import DatasetNotAvailableError
from dispsafe_nb.evaluation.benchmarks import benchmark, benchmark_records
from dispsafe_nb.ui.over_refusal_explorer import type_label

# ---------------------------------------------------------------------------------------------------------
# Presets: evaluation prompts by benchmark and category (test splits only: nothing a student trained on)
# ---------------------------------------------------------------------------------------------------------

HARMFUL_MARK = "⚠ harmful"
# (label, benchmark, split by category?)
PRESET_SETS: tuple[tuple[str, str, bool], ...] = (
    ("AdvBench test", "advbench_test", False),
    ("JBB harmful", "jbb_harmful", True),
    ("JBB benign", "jbb_benign", True),
    ("XSTest safe", "xstest_safe", True),
    ("bundled borderline test", "bundled_borderline_test", True),
    ("Alpaca test", "alpaca_test", False),
)


@dataclass(frozen=True)
class PresetSet:
    label: str  # e.g. "XSTest safe · homonyms" or "⚠ harmful · AdvBench test"
    benchmark: str
    category: str | None
    harmful: bool
    prompts: tuple[str, ...]


def presets(per_set: int = 25, seed: int = 0) -> list[PresetSet]:
    """Prompt presets from the evaluation benchmarks (their test splits), by benchmark and category, at most
    `per_set` each; harmful sets are labelled as such. Sets whose data is not available here are left out."""

    out = []
    for label, bench, by_category in PRESET_SETS:
        spec = benchmark(bench)
        try:
            records = benchmark_records(bench, limit=None if by_category else per_set, seed=seed)
        except DatasetNotAvailableError:
            continue
        harmful = spec.kind == "harmful"
        mark = f"{HARMFUL_MARK} · " if harmful else ""
        groups: dict[str | None, list[str]] = {}
        for r in records:
            groups.setdefault(r.category if by_category else None, []).append(r.text)
        for category, texts in groups.items():
            name = label if category is None else f"{label} · {type_label(bench, category)}"
            out.append(PresetSet(mark + name, bench, category, harmful, tuple(texts[:per_set])))
    return out


# Notebook 06's fixed probing list: a few test-split prompts of each kind, from these benchmarks.
FIXED_SETS: dict[str, str] = {
    "harmful": "advbench_test",
    "borderline": "xstest_safe",
    "benign": "alpaca_test",
}


def fixed_prompts(per_kind: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """{kind: prompts}: `per_kind` test prompts of each kind (harmful, borderline-safe, benign), deterministic."""

    if per_kind < 1:
        raise ValueError(f"per_kind must be at least 1, not {per_kind}")
    return {
        kind: [r.text for r in benchmark_records(b, limit=per_kind, seed=seed)]
        for kind, b in FIXED_SETS.items()
    }
