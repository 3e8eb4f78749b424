"""What may be trained on: train/val prompts of trainable sets, decontaminated, and the checks that refuse the rest."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dispsafe_nb.data.decontamination import Decontaminator, decontaminate, default_decontaminator
from dispsafe_nb.data.errors import EvalOnlyError
from dispsafe_nb.data.records import PromptRecord, check_seed, sample_records
from dispsafe_nb.data.registry import EVAL_ONLY, TRAINABLE, dataset_spec, load_dataset


def training_prompts(
    names: Sequence[str] | str,
    split: str = "train",
    limit_per_set: int | None = None,
    seed: int = 0,
    *,
    download: bool = True,
) -> list[PromptRecord]:
    """Training (or validation) prompts from trainable sets, decontaminated against evaluation-only sets."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        dataset_spec(name)  # unknown names fail first, with a suggestion
    if split == "test":
        raise EvalOnlyError(
            "the 'test' split is held out for evaluation; train on 'train' (or tune on 'val')"
        )
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    bad = [n for n in names if n in EVAL_ONLY]
    if bad:
        raise EvalOnlyError(
            f"evaluation-only dataset(s) {bad} cannot be used for training; trainable: {sorted(TRAINABLE)}"
        )
    check_seed(seed)
    # Load first (a download puts the set's own test split on disk), then build the checker from what is there.
    loaded = {name: load_dataset(name, split, None, seed, download=download) for name in names}
    checker = default_decontaminator()
    out: list[PromptRecord] = []
    for name in names:
        # Decontaminate before sampling, so `limit_per_set` still yields that many records when it can.
        records = decontaminate(loaded[name], checker)
        out += sample_records(records, limit_per_set, seed)
    return out


def assert_trainable(records: Iterable[PromptRecord]) -> None:
    """Raise EvalOnlyError if any record comes from an evaluation-only set or the test split."""
    bad = [
        r for r in records if r.source in EVAL_ONLY or r.split == "test" or r.split not in ("train", "val")
    ]
    if bad:
        shown = ", ".join(f"{r.id} ({r.source}, {r.split or 'no split'})" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise EvalOnlyError(f"{len(bad)} record(s) must not be used for training: {shown}{more}")


def check_training_texts(texts: Iterable[str], checker: Decontaminator | None = None) -> None:
    """Refuse training prompts that are, or nearly repeat, an evaluated prompt: raises EvalOnlyError naming each
    offending prompt and the evaluated sets it leaks (decontaminate them, or pick other prompts)."""
    checker = checker or default_decontaminator()
    bad = {}
    for text in dict.fromkeys(texts):
        leaked = checker.leaks(text)
        if leaked:
            bad[text] = sorted(leaked)
    if bad:
        shown = "; ".join(f"{t[:80]!r} ({', '.join(sets)})" for t, sets in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise EvalOnlyError(
            f"{len(bad)} training prompt(s) repeat an evaluated prompt exactly or nearly: {shown}{more}. "
            "Drop them (data.decontaminate) or train on other prompts."
        )
