"""Checkpoints: save a run's method, optimiser and history, and resume from them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from dispsafe_nb import data
from dispsafe_nb.common.artifacts import load_artifact, save_artifact
from dispsafe_nb.methods import Method
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.history import History

CHECKPOINT_KIND = "distill_checkpoint"


def save_checkpoint(
    folder: str | Path,
    method: Method,
    opt: torch.optim.Optimizer,
    step: int,
    history: History,
    cfg: DistillConfig,
    training_data: str | None = None,
    extra: Mapping[str, torch.nn.Module] | None = None,
) -> Path:
    """The method's trainable tensors, Adam's moments and step, the history and config: everything needed to
    resume exactly. `extra`: other trained modules (PPO's value head), saved and restored the same way."""
    tensors, adam_steps = {}, {}
    for prefix, module_params in _checkpointed(method, extra).items():
        for name, p in module_params.items():
            state = opt.state[p]
            key = f"{prefix}{name}"
            tensors[f"param.{key}"] = p
            tensors[f"exp_avg.{key}"] = state["exp_avg"]
            tensors[f"exp_avg_sq.{key}"] = state["exp_avg_sq"]
            adam_steps[key] = float(state["step"])
    meta = {
        "step": step,
        "adam_steps": adam_steps,
        "history": history.to_dict(),
        "config": asdict(cfg),
        "training_data_hash": training_data,
        "split_version": data.SPLIT_VERSION,
    }
    return save_artifact(folder, CHECKPOINT_KIND, tensors, meta)


def _checkpointed(
    method: Method, extra: Mapping[str, torch.nn.Module] | None
) -> dict[str, dict[str, torch.nn.Parameter]]:
    groups = {"": method.named_trainable_parameters()}
    for prefix, module in (extra or {}).items():
        groups[f"{prefix}/"] = dict(module.named_parameters())
    return groups


def restore_checkpoint(
    folder: str | Path,
    method: Method,
    opt: torch.optim.Optimizer,
    cfg: DistillConfig,
    training_data: str | None = None,
    extra: Mapping[str, torch.nn.Module] | None = None,
) -> tuple[int, History]:
    """Load a checkpoint written by `save_checkpoint` into `method` (and `extra`) and `opt`: (step, history)."""
    tensors, meta = load_artifact(folder, CHECKPOINT_KIND)
    if meta.get("split_version") != data.SPLIT_VERSION:
        raise ValueError(
            f"checkpoint in {folder} was written under split version {meta.get('split_version', 'v1 (seeded)')}, "
            f"not {data.SPLIT_VERSION}: start a new run"
        )
    if training_data is not None and meta.get("training_data_hash") not in (None, training_data):
        raise ValueError(
            f"checkpoint in {folder} was trained on other data; resume with the same teacher samples"
        )
    now = json.loads(json.dumps(asdict(cfg)))
    # A field the checkpoint predates takes its default (fields are added with defaults that compute the same
    # losses: scoring, autocast, bucketing).
    defaults = json.loads(json.dumps(asdict(DistillConfig())))
    saved_cfg = {**{k: v for k, v in defaults.items() if k not in meta["config"]}, **meta["config"]}
    if saved_cfg != now:
        changed = sorted(k for k in set(now) | set(saved_cfg) if saved_cfg.get(k) != now.get(k))
        raise ValueError(f"checkpoint in {folder} was written with another config (differs in {changed})")
    for prefix, module_params in _checkpointed(method, extra).items():
        for name, p in module_params.items():
            key = f"{prefix}{name}"
            if f"param.{key}" not in tensors:
                raise ValueError(f"checkpoint in {folder} has no tensor for {key}; start a new run")
            with torch.no_grad():
                p.copy_(tensors[f"param.{key}"].to(p.device))
            opt.state[p] = {
                "step": torch.tensor(meta["adam_steps"][key]),
                "exp_avg": tensors[f"exp_avg.{key}"].to(p.device),
                "exp_avg_sq": tensors[f"exp_avg_sq.{key}"].to(p.device),
            }
    return int(meta["step"]), History(**meta["history"])
