"""The distillation pipeline end to end in one call: guard → teacher samples → students → evaluation → metrics.

Notebook 03 walks through these steps one by one and the distillation benchmark runs them at scale; this function
runs them at any size with one seed, so that reproducibility can be tested: the same config and seed must give the
same metrics from empty caches and from warm ones (`tests/test_determinism.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dispsafe_nb import data
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.evaluation.harness import evaluate, evaluate_base_and_dual
from dispsafe_nb.evaluation.records import metrics_by_system
from dispsafe_nb.guards.guard_training import GuardTrainingConfig, load_embedding_guard
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.system.teacher_cache import teacher_samples
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import training_mix
from dispsafe_nb.training.loop import distill


@dataclass
class PipelineConfig:
    """Sizes of one pipeline run (defaults: notebook 03's smoke sizes)."""

    seed: int = 0
    objectives: tuple[str, ...] = ("tv", "kl")
    mix: tuple[int, int, int] = (3, 3, 2)  # training prompts: harmful, benign, borderline
    k_samples: int = 1
    max_new_tokens: int = 16
    distill: dict[str, Any] = field(default_factory=lambda: {"n_tokens": 4, "steps": 3, "batch_size": 2})
    benchmarks: tuple[str, ...] = ("advbench_test", "xstest_safe", "alpaca_test")
    eval_limit: int = 3
    guard: GuardTrainingConfig = field(default_factory=GuardTrainingConfig)

    def __post_init__(self) -> None:
        data.check_seed(self.seed)


def run_pipeline(cfg: PipelineConfig, llm: LLM | None = None, progress: bool = False) -> dict[str, Any]:
    """Train the guard (or load it from the cache), sample the teacher, distil each objective and evaluate base,
    dual and students greedily. Returns {"metrics": ..., "losses": ..., "alphas": ..., "guard": ...}."""
    llm = llm or load_llm()
    guard = load_embedding_guard(cfg.guard, progress=progress)
    system = SafeSystem(llm, guard)
    teacher_decoding = decoding_preset("teacher", max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    records = training_mix(*cfg.mix, seed=cfg.seed)
    samples = teacher_samples(
        system, [r.text for r in records], k=cfg.k_samples, decoding=teacher_decoding, progress=progress
    )
    greedy = DecodingConfig(cfg.max_new_tokens, seed=cfg.seed)
    common = dict(limit=cfg.eval_limit, decoding=greedy, seed=cfg.seed, progress=progress)
    evaluated, _ = evaluate_base_and_dual(system, list(cfg.benchmarks), **common)
    losses = {}
    for objective in cfg.objectives:
        dcfg = DistillConfig(objective=objective, seed=cfg.seed, **cfg.distill)
        soft, history = distill(llm, samples, dcfg, progress=progress)
        losses[objective] = history.loss
        evaluated += evaluate(soft.bind(llm), list(cfg.benchmarks), system_name=f"{objective}-disp", **common)
    return {
        "metrics": metrics_by_system(evaluated),
        "answers": {(r.system, r.benchmark): [o["response"] for o in r.outputs] for r in evaluated},
        "losses": losses,
        "alphas": [list(s.alphas) for s in samples],
        "guard": guard.describe(),
        "config": {**asdict(cfg), "threads": torch.get_num_threads()},
    }


def train_student(
    llm: LLM,
    system: SafeSystem,
    folder: str | Path,
    distill_config: DistillConfig,
    mix: tuple[int, int, int] = (24, 24, 16),
    k_samples: int = 1,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> Any:
    """Distil `system` into a soft prompt on a small training mix (teacher samples from the cache) and save it to
    `folder`: the student notebook 06 and the prober use when notebook 03 has not been run. Returns the folder."""
    seed = distill_config.seed
    records = training_mix(*mix, seed=seed)
    decoding = decoding_preset("teacher", max_new_tokens=max_new_tokens, seed=seed)
    samples = teacher_samples(
        system, [r.text for r in records], k=k_samples, decoding=decoding, progress=progress
    )
    soft, _ = distill(llm, samples, distill_config, progress=progress)
    return soft.save(
        folder, {"notebook": "06_probe", "mix": list(mix), "teacher_max_new_tokens": max_new_tokens}
    )
