"""A student of a training mix at the paper's scale: budgets, teacher samples, one training run."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dispsafe_nb import data
from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.system.teacher_cache import teacher_samples
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import steps_per_epoch
from dispsafe_nb.training.loop import distill

# Named training budgets. "paper": effective batch 32 (8 x 4 accumulated), one epoch over the teacher samples,
# each seen once (the paper's ~200 iterations at 5-10K prompts); "notebook": notebook 03's 60 steps of 4, drawn
# with replacement.
BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 8, "grad_accum": 4, "sampling": "epoch", "epochs": 1},
    "notebook": {"batch_size": 4, "grad_accum": 1, "sampling": "replacement", "steps": 60},
}


def budget_config(budget: str | Mapping[str, Any], n_examples: int, **config: Any) -> Any:
    """The `DistillConfig` of a named budget (or a dict like `BUDGETS`' values) for `n_examples` teacher samples:
    its `steps`, or `epochs` passes over the examples; other `DistillConfig` fields in `config` (a `steps` there
    overrides the budget's)."""

    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(unknown_name_message("budget", budget, BUDGETS))
        budget = BUDGETS[budget]
    settings = dict(budget)
    epochs, steps = settings.pop("epochs", None), settings.pop("steps", None)
    if (epochs is None) == (steps is None):
        raise ValueError(f"a budget sets either 'steps' or 'epochs', not {dict(budget)}")
    cfg = DistillConfig(**{**settings, **config})
    if "steps" in config:
        return cfg
    return replace(cfg, steps=steps or epochs * steps_per_epoch(n_examples, cfg))


def teach(
    system: SafeSystem,
    records: Sequence[data.PromptRecord],
    k: int,
    decoding: DecodingConfig,
    progress: bool = True,
) -> tuple[list[Any], float]:
    """The dual system's k samples per prompt of a mix (cached per prompt) and the wall seconds they took."""

    t0 = time.perf_counter()
    texts = [r.text for r in records]
    samples = teacher_samples(system, texts, k=k, decoding=decoding, batch_size=16, progress=progress)
    return samples, time.perf_counter() - t0


def train_on_mix(
    system: SafeSystem,
    records: Sequence[data.PromptRecord],
    k: int,
    teacher_decoding: DecodingConfig,
    epochs: int = 1,
    progress: bool = True,
    **config: Any,
) -> tuple[Any, Any]:
    """A student of the dual system on a training mix: teacher samples (k per prompt, cached per prompt), then
    `epochs` passes over them in a seeded order (`sampling="epoch"`) with the `DistillConfig` fields in `config`.
    Returns the trained method and its config."""

    samples, _ = teach(system, records, k, teacher_decoding, progress)
    budget = {"sampling": config.pop("sampling", "epoch"), "epochs": epochs}
    cfg = budget_config(budget, len(samples) * k, **config)
    method, _ = distill(system.llm, samples, cfg, progress=progress)
    return method, cfg
