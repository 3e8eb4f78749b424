"""Distil the safe system into a method (soft prompt, LoRA, steering vector): `distill(...)`.

Each training example is one teacher sample (x, y, α(x, y)) plus the refusal y_r; the loss compares the student's
sequence log-probabilities of y and y_r with the teacher's two-point distribution α δ_y + (1 − α) δ_{y_r}
(TV-DiSP, Eq. 4, or KL-DiSP). The baseline objective "perplexity" fits fixed targets instead (y_r on prompts
labelled harmful, the base model's own sample y on the others, no α); the reward objectives REINFORCE and PPO
(`dispsafe_nb.training.rl`) sample from the student and are dispatched from here, so one call trains every combination.
Adam (ε = 1e-7, as the paper), gradient accumulation, a progress bar with the live loss, a history with a
validation estimate of the distillation gap, periodic checkpoints and exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from dispsafe_nb import data
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods import Method, new_method
from dispsafe_nb.system.teacher_cache import TeacherSample, deployed_alphas
from dispsafe_nb.training.batch_loss import batch_loss_of
from dispsafe_nb.training.checkpoints import restore_checkpoint, save_checkpoint
from dispsafe_nb.training.config import REWARD_OBJECTIVES, TARGET_OBJECTIVES, DistillConfig, learning_rate
from dispsafe_nb.training.examples import (
    batch_indices,
    data_hash,
    example_tokens,
    examples_from_samples,
    micro_batches,
)
from dispsafe_nb.training.history import History, record_validation
from dispsafe_nb.training.rl import optimise

if TYPE_CHECKING:
    from dispsafe_nb.training.examples import Example


def distill(
    llm: LLM,
    train_samples: Sequence[TeacherSample],
    cfg: DistillConfig | None = None,
    val_samples: Sequence[TeacherSample] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    labels: Mapping[str, bool] | None = None,
    guard: Any | None = None,
) -> tuple[Method, History]:
    """Train the config's method with its objective on teacher samples; returns the trained method (with its
    training config as metadata) and the history.

    `labels` ({prompt: is harmful}) are needed by the perplexity baseline only; `guard` (the teacher's) by the
    reward objectives, which sample from the student and are trained by `dispsafe_nb.rl.optimise` (the teacher
    samples then give the prompts, and the validation loss). With `checkpoint_dir` and `checkpoint_every`, a
    checkpoint is written periodically and at the end; `resume=True` continues from the checkpoint there (same
    batches, same optimiser state).
    """
    cfg = cfg or DistillConfig()
    if cfg.objective in TARGET_OBJECTIVES and labels is None:
        raise ValueError(
            f"the {cfg.objective} objective needs labels={{prompt: is harmful}} (train.prompt_labels)"
        )
    if cfg.teacher_alpha == "deployed":
        train_samples, val_samples = deployed_alphas(train_samples), deployed_alphas(val_samples)
    examples = examples_from_samples(train_samples, labels)
    if not examples:
        raise ValueError("no training examples: pass teacher samples for at least one prompt")
    # Whatever mix the caller built: no evaluated prompt (or near-duplicate) is trained on.
    data.check_training_texts(s.prompt for s in train_samples)
    torch.manual_seed(cfg.seed)
    method = make_method(llm, cfg)
    if not method.trainable_parameters():
        raise ValueError(f"the {method.kind} has no trainable parameters")
    if cfg.objective in REWARD_OBJECTIVES:
        if guard is None:
            raise ValueError(
                f"the {cfg.objective} objective needs guard= (the teacher's guard gives the reward)"
            )
        if checkpoint_dir is not None or resume:
            raise ValueError(f"checkpoints are not supported for the {cfg.objective} objective yet")
        history = optimise(llm, guard, method, train_samples, cfg, val_samples, progress)
    else:
        history = _fit(llm, method, examples, cfg, val_samples, checkpoint_dir, resume, progress, labels)
    method.metadata.update(
        {
            "objective": cfg.objective,
            "distill_config": asdict(cfg),
            "training_data_hash": data_hash(examples),
            "split_version": data.SPLIT_VERSION,
            "decontamination": data.decontamination_report(),
            "n_train_prompts": len(train_samples),
            "n_train_examples": len(examples),
            "final_loss": history.loss[-1] if history.loss else None,
        }
    )
    return method, history


def make_method(llm: LLM, cfg: DistillConfig) -> Method:
    """The config's method, freshly initialised for `llm` (seeded by the config's seed)."""
    return new_method(
        cfg.method,
        llm,
        n_tokens=cfg.n_tokens,
        init=cfg.init,
        init_text=cfg.init_text,
        seed=cfg.seed,
        lora_rank=cfg.lora_rank,
        lora_targets=tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip()),
        steering_layer=cfg.steering_layer,
    )


def _fit(
    llm: LLM,
    method: Method,
    examples: Sequence[Example],
    cfg: DistillConfig,
    val_samples: Sequence[TeacherSample],
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: bool,
    labels: Mapping[str, bool] | None,
) -> History:
    """The loop of the teacher-sample objectives (TV, KL, perplexity)."""

    opt = torch.optim.Adam(method.trainable_parameters(), lr=cfg.lr, eps=1e-7)
    lengths: dict[int, int] = {}

    def length(example: Example) -> int:  # tokenised once per example
        if id(example) not in lengths:
            lengths[id(example)] = example_tokens(llm, example)
        return lengths[id(example)]

    history, start = History(), 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        start, history = restore_checkpoint(checkpoint_dir, method, opt, cfg, data_hash(examples))
    if val_samples and start == 0:  # step 0: the reference every later validation loss is compared with
        record_validation(llm, method, val_samples, cfg, history, 0, labels)
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"{cfg.objective}/{cfg.method}",
        disable=not progress,
        initial=start,
        total=cfg.steps,
    )
    for step in bar:
        for group in opt.param_groups:  # a pure function of the step: resuming needs no scheduler state
            group["lr"] = learning_rate(cfg, step)
        opt.zero_grad()
        total, alphas, clip_y, clip_r = 0.0, [], 0.0, 0.0
        draws = [batch_indices(len(examples), cfg, step, micro) for micro in range(cfg.grad_accum)]
        for batch in micro_batches(examples, draws, cfg.bucketing, length):
            out = batch_loss_of(llm, method, batch, cfg)
            (out.loss / cfg.grad_accum).backward()
            total += out.loss.item() / cfg.grad_accum
            alphas += out.alpha.tolist()
            cy, cr = out.clipped()
            clip_y, clip_r = clip_y + cy / cfg.grad_accum, clip_r + cr / cfg.grad_accum
        opt.step()
        history.step.append(step + 1)
        history.loss.append(total)
        history.mean_alpha.append(sum(alphas) / len(alphas))
        history.clipped_y.append(clip_y)
        history.clipped_r.append(clip_r)
        postfix = {"loss": f"{total:.3f}"}
        if val_samples and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            val = record_validation(llm, method, val_samples, cfg, history, step + 1, labels)
            postfix["val"] = f"{val:.3f}"
        bar.set_postfix(postfix)
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {step + 1}; lower the learning rate")
        due = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
        if checkpoint_dir is not None and (due or step + 1 == cfg.steps):
            save_checkpoint(checkpoint_dir, method, opt, step + 1, history, cfg, data_hash(examples))
    return history
