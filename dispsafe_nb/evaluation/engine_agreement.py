"""Do two generation engines give the same evaluation? Per system and set, from the records of one evaluation run
on each engine (the same prompts): verdict agreement and Cohen's κ, the refusal-rate difference with a paired 95 %
interval, the share of identical answers and where differing answers first part.

The student is trained in PyTorch on dequantised weights and deployed on llama.cpp's 4-bit kernels (the paper's
setting); these numbers say whether what was measured in one survives the move to the other."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from dispsafe_nb.common.classifier_stats import binary_agreement
from dispsafe_nb.evaluation.records import EvalRecord

# κ is reported as a target only where both engines refuse at least this share of a set's prompts: on a set where
# nearly nothing is refused, one flipped verdict swings κ from 1 to 0 while agreement stays near 1.
KAPPA_MIN_RATE = 0.10


def paired_rate_difference(
    reference: Sequence[int], other: Sequence[int], z: float = 1.96
) -> dict[str, float]:
    """rate(other) − rate(reference) on the same items, with a Wald interval for paired proportions:
    var = ((b + c) − (b − c)² / n) / n², b and c the two kinds of discordant pairs."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"need the same non-zero number of verdicts, got {len(reference)} and {len(other)}")
    n = len(reference)
    b = sum(1 for r, o in zip(reference, other, strict=True) if r and not o)
    c = sum(1 for r, o in zip(reference, other, strict=True) if o and not r)
    diff = (c - b) / n
    half = z * math.sqrt(max((b + c) - (b - c) ** 2 / n, 0.0)) / n
    return {"difference": diff, "low": diff - half, "high": diff + half, "discordant": b + c}


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (None when they are equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_records(
    reference: EvalRecord, other: EvalRecord, tokenize: Callable[[str], Sequence[int]]
) -> dict[str, Any]:
    """One set × system: `reference` and `other` must hold greedy answers to the same prompts."""
    ref = {o["id"]: o for o in reference.outputs}
    oth = {o["id"]: o for o in other.outputs}
    if set(ref) != set(oth):
        raise ValueError(f"{reference.system}/{reference.benchmark}: the two runs answered different prompts")
    if any("response" not in o for o in [*ref.values(), *oth.values()]):
        raise ValueError("engine agreement compares greedy answers (one response per prompt), not samples")
    ids = sorted(ref)
    a = [int(ref[i]["refused"] >= 0.5) for i in ids]
    b = [int(oth[i]["refused"] >= 0.5) for i in ids]
    parted = [
        first_divergence(tokenize(ref[i]["response"]), tokenize(oth[i]["response"]))
        for i in ids
        if ref[i]["response"] != oth[i]["response"]
    ]
    positions = [p for p in parted if p is not None]
    return {
        "system": reference.system,
        "benchmark": reference.benchmark,
        **binary_agreement(a, b),
        "rate_difference": paired_rate_difference(a, b),
        "identical_share": 1 - len(parted) / len(ids),
        "first_divergence_median": statistics.median(positions) if positions else None,
    }


def engine_agreement(
    reference: Sequence[EvalRecord], other: Sequence[EvalRecord], tokenize: Callable[[str], Sequence[int]]
) -> list[dict[str, Any]]:
    """`compare_records` for every (system, set) the two runs share."""
    by_key = {(r.system, r.benchmark): r for r in other}
    rows = [
        compare_records(r, by_key[(r.system, r.benchmark)], tokenize)
        for r in reference
        if (r.system, r.benchmark) in by_key
    ]
    if not rows:
        raise ValueError("the two runs share no (system, set) pair")
    return rows


def agreement_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The lowest verdict agreement over all rows, and the lowest κ over the rows where both engines refuse at
    least KAPPA_MIN_RATE of the prompts (None when no row qualifies)."""
    kappa_rows = [r for r in rows if min(r["rate_a"], r["rate_b"]) >= KAPPA_MIN_RATE]
    worst = min(rows, key=lambda r: r["agreement"])
    return {
        "min_verdict_agreement": worst["agreement"],
        "min_agreement_at": f"{worst['system']}/{worst['benchmark']}",
        "min_verdict_kappa": min((r["kappa"] for r in kappa_rows), default=None),
        "kappa_rows": len(kappa_rows),
    }
