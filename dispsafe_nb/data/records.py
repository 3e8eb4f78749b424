"""Prompt records, text normalisation and the one seedless hash split of the project."""

from __future__ import annotations

import functools
import hashlib
import random
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)

# The one split assignment of the project. v1 hashed the caller's sampling seed into the split, so two callers with
# different seeds (the judge guard with seed 1, evaluation with seed 0) saw different test sets and leaked prompts
# into each other's training data. Artifacts record this version; one trained under another refuses to load.
SPLIT_VERSION = "v2-seedless"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its label and provenance."""

    id: str  # stable, e.g. "advbench-0042", "bundled_harmful-harm-001"
    text: str
    is_harmful: bool
    category: str
    source: str  # dataset name, e.g. "advbench"
    split: str  # "train" | "val" | "test" (evaluation-only sets: always "test")
    checks: tuple = ()  # verifiable-instruction checks (tuple of dicts), bundled_verifiable only
    target: str | None = None  # e.g. AdvBench/JBB "Sure, here is ..." target, if the source has one
    form: str = ""  # phrasing form ("imperative", "question", ...), the bundled *_forms sets only
    # Records sharing a group share a split (a harmful request and its borderline-safe twin); "" = on its own.
    group: str = ""


RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PromptRecord))


def records_to_frame(records: Iterable[PromptRecord]) -> pd.DataFrame:
    """One row per record, one column per :class:`PromptRecord` field."""
    records = list(records)
    return pd.DataFrame(
        {col: [getattr(r, col) for r in records] for col in RECORD_COLUMNS}, columns=RECORD_COLUMNS
    )


TRAILING_PUNCT = ".!?;:,\u3002 "


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, collapse whitespace, strip, and drop trailing punctuation (dedup / split key)."""
    t = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return t.rstrip(TRAILING_PUNCT)


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions!r}"
        )


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed must be a plain int (not a bool, float or string): it picks subsets and must mean one thing."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {seed!r} ({type(seed).__name__})")
    return seed


def assign_split(text: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Split of a prompt from a stable hash of its normalised text, the same for every caller and every seed.

    Hashing the *normalised* text (not an id) is what keeps a prompt that several datasets share (JBB reuses
    AdvBench items, for instance) in the same split everywhere. No seed enters the hash (`SPLIT_VERSION`).
    """
    fractions = tuple(float(f) for f in fractions)
    _check_fractions(fractions)
    return split_cached(text, fractions)


@functools.lru_cache(maxsize=1 << 18)
def split_cached(text: str, fractions: tuple[float, ...]) -> str:
    # Cached: Alpaca alone is 31k texts, and notebooks reload the same sets often.
    digest = hashlib.sha256(f"dispsafe-split:{SPLIT_VERSION}:{normalize_text(text)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if u < cumulative:
            return split
    return SPLITS[-1]  # only reachable through float rounding at u ~ 1


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")


def sample_records(records: Sequence[PromptRecord], limit: int | None, seed: int) -> list[PromptRecord]:
    """At most `limit` records, chosen with `seed`, in their original order."""
    check_seed(seed)
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
