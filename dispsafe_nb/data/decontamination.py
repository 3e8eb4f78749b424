"""Decontamination: every training text is checked against every prompt the project evaluates on."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispsafe_nb.data.bundled import bundled_dir
from dispsafe_nb.data.errors import DatasetNotAvailableError, data_warning
from dispsafe_nb.data.near_duplicates import NEAR_DUPLICATE_THRESHOLD, NearDuplicateIndex
from dispsafe_nb.data.records import SPLIT_VERSION, PromptRecord, normalize_text
from dispsafe_nb.data.registry import DATASET_VIEWS, DATASETS, EVAL_ONLY, TRAINABLE, load_dataset
from dispsafe_nb.data.remote import REMOTE_FILES, cache_dir, mirror_dir

logger = logging.getLogger(__name__)


def eval_only_texts(download: bool = False) -> dict[str, set[str]]:
    """Normalised texts of each evaluation-only set that is available (locally, unless `download`)."""
    texts: dict[str, set[str]] = {}
    for name in sorted(
        EVAL_ONLY - DATASET_VIEWS
    ):  # views are subsets: counting them again would double the report
        try:
            texts[name] = {normalize_text(r.text) for r in DATASETS[name].load(download)}
        except (
            DatasetNotAvailableError,
            FileNotFoundError,
        ):  # a public file, or a bundled one not in this folder
            logger.info("decontamination: %s is not available locally, skipped", name)
    return texts


def evaluated_texts(download: bool = False) -> dict[str, set[str]]:
    """Every prompt this project may evaluate on, by set: the evaluation-only sets available here, plus the
    test split of every trainable set (``"<name>:test"``). Training texts are decontaminated against all of it."""
    texts = eval_only_texts(download)
    for name in sorted(TRAINABLE):
        try:
            texts[f"{name}:test"] = {
                normalize_text(r.text) for r in load_dataset(name, split="test", download=download)
            }
        except (DatasetNotAvailableError, FileNotFoundError):
            logger.info("decontamination: %s is not available locally, skipped", name)
    return texts


@dataclass
class Decontaminator:
    """Drops training texts that contain an evaluated prompt, exactly or nearly (`near_duplicates`).

    `report()` says which evaluated sets could be checked here (an evaluation-only set that is not on disk cannot
    be); every artifact and result records it."""

    texts: dict[str, set[str]]
    threshold: float = NEAR_DUPLICATE_THRESHOLD

    def __post_init__(self) -> None:
        self._exact = {t: n for n, ts in self.texts.items() for t in ts}
        self._near = NearDuplicateIndex(self.texts, self.threshold)

    def leaks(self, text: str) -> set[str]:
        """Names of the evaluated sets that `text` leaks (empty when clean)."""
        exact = self._exact.get(normalize_text(text))
        return ({exact} if exact else set()) | self._near.leaks(text)

    def report(self) -> dict[str, Any]:
        unavailable = sorted((EVAL_ONLY - DATASET_VIEWS) - set(self.texts))
        return {
            "split_version": SPLIT_VERSION,
            "checked": sorted(self.texts),
            "unavailable_eval_only": unavailable,
            "near_duplicate": f"word containment >= {self.threshold}, either way (near_duplicates.py)",
        }


@functools.lru_cache(maxsize=4)
def cached_decontaminator(
    mirror: str, bundled: str, available: tuple[str, ...], download: bool
) -> Decontaminator:
    # Keyed by where the data comes from and which public files are on disk: tests point DISPSAFE_DATA /
    # DISPSAFE_BUNDLED / DISPSAFE_CACHE elsewhere, and a download makes one more set checkable.
    return Decontaminator(evaluated_texts(download))


def _locally_available() -> tuple[str, ...]:
    mirror, cache = mirror_dir(), cache_dir()
    return tuple(
        key
        for key in sorted(REMOTE_FILES)
        if (mirror is not None and (mirror / key).is_file()) or (cache / key).is_file()
    )


def default_decontaminator(download: bool = False) -> Decontaminator:
    """The decontaminator for the data visible now (built once per data location; ~seconds for Alpaca)."""
    folder = bundled_dir()
    # The bundled files' sizes and times are part of the key: editing one rebuilds the index.
    stamp = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.jsonl"))
    return cached_decontaminator(str(mirror_dir()), f"{folder}:{stamp}", _locally_available(), download)


def decontamination_report() -> dict[str, Any]:
    """Which evaluated sets decontamination could check here, the split version and the near-duplicate rule."""
    return default_decontaminator().report()


def decontaminate(
    records: Sequence[PromptRecord],
    eval_texts: dict[str, set[str]] | Decontaminator | None = None,
) -> list[PromptRecord]:
    """Drop records that (nearly) contain an evaluated prompt, warning with the counts per evaluated set."""
    if eval_texts is None:
        checker = default_decontaminator()
    elif isinstance(eval_texts, Decontaminator):
        checker = eval_texts
    else:
        checker = Decontaminator(eval_texts)
    kept, hits = [], Counter()
    for r in records:
        leaked = checker.leaks(r.text)
        if leaked:
            hits.update(leaked)
        else:
            kept.append(r)
    dropped = len(records) - len(kept)
    if dropped:
        detail = ", ".join(f"{n}: {c}" for n, c in sorted(hits.items()))
        data_warning(
            f"decontamination dropped {dropped} training text(s) that (nearly) repeat an evaluated prompt ({detail})"
        )
    return kept


def decontaminate_texts(texts: Sequence[str], checker: Decontaminator | None = None) -> list[str]:
    """The texts (e.g. a guard's response examples) that contain no evaluated prompt."""
    checker = checker or default_decontaminator()
    kept = [t for t in texts if not checker.leaks(t)]
    if len(kept) < len(texts):
        data_warning(
            f"decontamination dropped {len(texts) - len(kept)} training text(s) that (nearly) repeat an evaluated prompt"
        )
    return kept
