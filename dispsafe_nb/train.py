"""Distil the safe system into a method (soft prompt, LoRA, steering vector): `distill(...)`.

Each training example is one teacher sample (x, y, α(x, y)) plus the refusal y_r; the loss compares the student's
sequence log-probabilities of y and y_r with the teacher's two-point distribution α δ_y + (1 − α) δ_{y_r}
(TV-DiSP, Eq. 4, or KL-DiSP). The baseline objective "perplexity" fits fixed targets instead (y_r on prompts
labelled harmful, the base model's own sample y on the others, no α); the reward objectives REINFORCE and PPO
(`dispsafe_nb.rl`) sample from the student and are dispatched from here, so one call trains every combination.
Adam (ε = 1e-7, as the paper), gradient accumulation, a progress bar with the live loss, a history with a
validation estimate of the distillation gap, periodic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dispsafe_nb import data
from dispsafe_nb.artifacts import load_artifact, save_artifact
from dispsafe_nb.methods import DEFAULT_INIT_TEXT, DEFAULT_TARGETS, Method, check_method_name, new_method
from dispsafe_nb.mixes import BORDERLINE_SOURCES, group_mix
from dispsafe_nb.models import LLM
from dispsafe_nb.names import unknown_name_message
from dispsafe_nb.objectives import (
    kl_disp_loss,
    perplexity_loss,
    response_token_ids,
    sequence_logprobs,
    tv_disp_loss,
)
from dispsafe_nb.safe_system import TeacherSample, TeacherSampleError, deployed_alphas
from dispsafe_nb.shared_prompt import shared_prompt_logprobs

OBJECTIVES = {"tv": tv_disp_loss, "kl": kl_disp_loss}  # the distillation losses on teacher samples
TARGET_OBJECTIVES = ("perplexity",)  # fixed targets from labels, no teacher α
REWARD_OBJECTIVES = ("reinforce", "ppo")  # samples from the student, reward = the teacher guard's p(safe)
ALL_OBJECTIVES = (*OBJECTIVES, *TARGET_OBJECTIVES, *REWARD_OBJECTIVES)
CHECKPOINT_KIND = "distill_checkpoint"
LR_SCHEDULES = ("linear", "constant")
WEIGHTINGS = ("none", "per_token")
TEACHER_ALPHAS = ("soft", "deployed")
SCORINGS = ("shared_prompt", "separate")
AUTOCASTS = ("none", "bf16")
BUCKETINGS = ("length", "none")
SAMPLINGS = ("replacement", "epoch")


@dataclass
class DistillConfig:
    """Hyperparameters of one distillation run (saved with the artifact). Paper settings in comments."""

    objective: str = "tv"  # "tv" (TV-DiSP), "kl" (KL-DiSP); baselines "perplexity", "reinforce", "ppo"
    # "soft_prompt", "lora" (parameter-matched to the soft prompt at n_tokens) or "steering_vector"
    method: str = "soft_prompt"
    n_tokens: int = 20  # paper: 100 (ablation 10-200); LoRA's parameter budget is n_tokens x hidden size
    init: str = "text"
    init_text: str = DEFAULT_INIT_TEXT
    # paper: 6e-4 ... 3e-3 over about 200 iterations at effective batch 32 on 1-3B models. With ~60 small steps
    # on a 135M model 3e-3 barely moves the prompt (AdvBench SGS 17 % after 30 steps); 3e-2 does.
    lr: float = 3e-2
    steps: int = 60  # paper: about 200 iterations
    batch_size: int = 4  # paper: effective batch 32
    grad_accum: int = 1
    # "sum": whole-sequence log-probs, Eq. 4 as written (clip thresholds log a and log(1 - a)). "mean": per-token
    # means, a named ablation only -- it moves the thresholds to a^T and (1 - a)^T (for a harmful prompt with
    # a = 0.05 and a 13-token refusal, the refusal stops being pushed at q(y_r) ~ 0.51 instead of 0.95).
    reduction: str = "sum"
    # "none": Eq. 4's weights a and 1 - a. "per_token": each term's weight divided by its token count (balances a
    # 48-token answer against a 13-token refusal for the optimiser; the clip thresholds stay where Eq. 4 puts them).
    weighting: str = "none"
    # "constant": lr throughout (the paper does not state its schedule); "linear": decays linearly to 0. In one
    # benchmark-sized run each, linear decay did not change the safety/usefulness trade-off beyond run-to-run noise.
    lr_schedule: str = "constant"
    # Which teacher Eq. 4 distils. "soft" (default, as written): the dual system that keeps y with probability α.
    # "deployed": α thresholded at 0.5 (1 if the deployed system keeps y, else 0) -- the system greedy evaluation
    # compares the student with; a named variant, not the paper's objective.
    teacher_alpha: str = "soft"
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    lora_rank: int | None = None  # None: the rank (and layers) matching the soft prompt's parameters
    lora_targets: str = ",".join(DEFAULT_TARGETS)  # comma-separated module names
    steering_layer: int | None = None  # None: the middle decoder layer
    # Reward objectives (dispsafe_nb.rl): per prompt of a batch, `rl_samples` answers of up to
    # `rl_max_new_tokens` tokens sampled from the student at temperature 1 (the budget's "teacher samples").
    rl_samples: int = 2
    rl_max_new_tokens: int = 32
    ppo_beta: float = 0.05  # KL penalty to the base model (the paper found PPO unstable and needed beta ~ 0)
    ppo_clip: float = 0.2
    ppo_epochs: int = 2  # optimisation passes over each batch of samples
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    value_lr: float = 1e-3  # the value head's own learning rate
    # How Eq. 4's two log-probs are computed (the same values up to rounding, a test checks): "shared_prompt"
    # encodes soft prompt + chat prompt once for y and y_r (dispsafe_nb.shared_prompt); "separate" runs one full
    # pass per (prompt, response) pair, the reference.
    scoring: str = "shared_prompt"
    # "bf16": the model's matrix products in bfloat16 under torch.autocast (the vocabulary head runs at its own
    # dtype, the losses in float32); "none": the model's own dtype throughout. Only with scoring="shared_prompt".
    autocast: str = "none"
    # How a step's batch_size x grad_accum drawn examples are cut into its grad_accum micro-batches: "length" sorts
    # them by token length first, so each micro-batch pads less; "none" keeps the order they were drawn in. Each
    # micro-batch still holds batch_size examples at weight 1/grad_accum, so the step's gradient is the same mean
    # over the same examples (a test checks). Batches are not drawn by length: length follows the label here
    # (refusals are short), and length-grouped batches would be all-harmful or all-benign.
    bucketing: str = "length"
    # "replacement": every micro-batch drawn uniformly with replacement (examples may repeat or be missed);
    # "epoch": a seeded permutation per epoch, consumed in order (the paper's "one epoch" sees each example once;
    # with `steps = steps_per_epoch(...)`).
    sampling: str = "replacement"

    def __post_init__(self) -> None:
        if self.objective not in ALL_OBJECTIVES:
            raise ValueError(unknown_name_message("objective", self.objective, ALL_OBJECTIVES))
        if self.scoring not in SCORINGS:
            raise ValueError(unknown_name_message("scoring", self.scoring, SCORINGS))
        if self.autocast not in AUTOCASTS:
            raise ValueError(unknown_name_message("autocast", self.autocast, AUTOCASTS))
        if self.sampling not in SAMPLINGS:
            raise ValueError(unknown_name_message("sampling", self.sampling, SAMPLINGS))
        if self.bucketing not in BUCKETINGS:
            raise ValueError(unknown_name_message("bucketing", self.bucketing, BUCKETINGS))
        if self.autocast != "none" and self.scoring != "shared_prompt":
            raise ValueError(
                "autocast='bf16' needs scoring='shared_prompt' (the reference path stays float32)"
            )
        check_method_name(self.method)
        for name in ("rl_samples", "rl_max_new_tokens", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.objective in REWARD_OBJECTIVES and self.rl_samples < 2:
            raise ValueError("reward objectives need rl_samples >= 2 (the leave-one-out baseline needs two)")
        if self.ppo_beta < 0 or not 0 < self.ppo_clip < 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("need ppo_beta >= 0, 0 < ppo_clip < 1 and 0 <= gae_lambda <= 1")
        if self.reduction not in {"sum", "mean"}:
            raise ValueError(f"reduction must be 'sum' or 'mean', not {self.reduction!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {self.weighting!r}")
        if self.weighting != "none" and self.reduction != "sum":
            raise ValueError(
                "weighting='per_token' rescales whole-sequence terms: use it with reduction='sum'"
            )
        data.check_seed(self.seed)
        if self.teacher_alpha not in TEACHER_ALPHAS:
            raise ValueError(f"teacher_alpha must be one of {TEACHER_ALPHAS}, not {self.teacher_alpha!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        for name in ("n_tokens", "steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


@dataclass(frozen=True)
class Example:
    """One training example: a prompt, one teacher sample y (its text, the sampled token ids, whether it
    finished) with its α, and the refusal."""

    prompt: str
    response: str
    alpha: float
    refusal: str
    response_ids: tuple[int, ...] = ()
    finished: bool = True
    harmful: bool | None = None  # the prompt's label, when known (only the perplexity baseline uses it)


def examples_from_samples(
    samples: Sequence[TeacherSample], labels: Mapping[str, bool] | None = None
) -> list[Example]:
    """Flatten teacher samples into (x, y, α, y_r) examples; every sample must carry its token ids.
    `labels`: {prompt: is harmful} (for the perplexity baseline); every prompt must then have one."""
    missing = [s.prompt for s in samples if not s.has_ids]
    if missing:
        raise TeacherSampleError(
            f"{len(missing)} teacher sample(s) lack the sampled token ids (first: {missing[0][:60]!r}); "
            "build them with safe_system.teacher_samples(), which keeps the ids and finish flags generate() gave"
        )
    if labels is not None:
        unlabelled = [s.prompt for s in samples if s.prompt not in labels]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} training prompt(s) have no harmful/benign label (first: "
                f"{unlabelled[0][:60]!r}); pass labels for every prompt, e.g. from train.prompt_labels(records)"
            )
    return [
        Example(
            s.prompt,
            y,
            float(a),
            s.refusal,
            tuple(ids),
            bool(fin),
            None if labels is None else labels[s.prompt],
        )
        for s in samples
        for y, a, ids, fin in zip(s.responses, s.alphas, s.response_ids, s.finished, strict=True)
    ]


def data_hash(examples: Sequence[Example]) -> str:
    """A short hash of the training data, stored with the artifact."""
    blob = json.dumps([asdict(e) for e in examples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_mix(
    n_harmful: int = 48, n_benign: int = 48, n_borderline: int = 32, seed: int = 0, split: str = "train"
) -> list[data.PromptRecord]:
    """Notebook 03's CPU-friendly default: 128 prompts from the train split (or "val" for validation) of every
    source the paper-scale mix draws from (`mixes.MIX_SOURCES`), each group's prompts shared evenly among its
    sources -- harmful: the bundled phrasing-form requests (imperatives, questions, first-person needs,
    role-play ...), the bundled harmful set, AdvBench and ToxiGen statements framed as requests; borderline: the
    bundled safe twins and borderline set; benign: bundled, ToxiGen's neutral requests and Alpaca. Evaluation-only
    sets and the test split are refused by `data.training_prompts`."""
    return group_mix(n_harmful, n_borderline, n_benign, seed=seed, split=split)


def prompt_labels(records: Sequence[data.PromptRecord]) -> dict[str, bool]:
    """{prompt text: is harmful} for a training mix (the perplexity baseline's targets)."""
    return {r.text: bool(r.is_harmful) for r in records}


def prompt_kinds(records: Sequence[data.PromptRecord]) -> dict[str, str]:
    """{prompt text: "harmful", "borderline" (the bundled borderline-safe set) or "benign"} for a training mix."""
    return {
        r.text: "harmful" if r.is_harmful else ("borderline" if r.source in BORDERLINE_SOURCES else "benign")
        for r in records
    }


@dataclass
class History:
    """What happened during training, step by step (JSON-able)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mean_alpha: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_refusal_gap: list[float] = field(default_factory=list)
    # Fractions of the batch whose TV clip is engaged (term switched off) on y and on y_r: the mechanism that
    # separates TV from KL, logged rather than asserted. Computed for KL too (it ignores them).
    clipped_y: list[float] = field(default_factory=list)
    clipped_r: list[float] = field(default_factory=list)
    # PPO only: the fraction of tokens whose probability ratio the clip held (the reward objectives log no TV
    # clip; their mean_alpha is the mean reward, the guard's α of the student's own samples).
    ppo_clip_fraction: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)


@dataclass
class BatchLoss:
    """The mean loss of a batch and what it was made of."""

    loss: torch.Tensor
    logq_y: torch.Tensor
    logq_r: torch.Tensor
    alpha: torch.Tensor

    def clipped_each(self) -> tuple[list[bool], list[bool]]:
        """Per example: is its y term / y_r term switched off by the TV clip (q ≥ teacher mass)?
        With reduction='mean' these compare per-token means with log a, i.e. the ablation's thresholds."""
        with torch.no_grad():
            a = self.alpha.to(self.logq_y.dtype)
            on_y = (a > 0) & (self.logq_y >= torch.log(a.clamp(min=1e-30)))
            on_r = (a < 1) & (self.logq_r >= torch.log((1 - a).clamp(min=1e-30)))
            return on_y.tolist(), on_r.tolist()

    def clipped(self) -> tuple[float, float]:
        """Fractions of examples whose y term / y_r term the TV clip has switched off (q ≥ teacher mass)."""
        on_y, on_r = self.clipped_each()
        return sum(on_y) / len(on_y), sum(on_r) / len(on_r)


@dataclass
class SequenceTerms:
    """What Eq. 4 needs for a batch: the student's log q(y|x), log q(y_r|x), the teacher's α, whether y is the
    refusal itself, and the token counts of y (with its eos where scored) and of y_r."""

    logq_y: torch.Tensor
    logq_r: torch.Tensor
    alpha: torch.Tensor
    same: torch.Tensor
    len_y: list[int]
    len_r: list[int]


def sequence_terms(llm: LLM, soft: Method, batch: Sequence[Example], cfg: DistillConfig) -> SequenceTerms:
    """Score a batch: the sampled ids exactly, a truncated sample without eos, the refusal with its eos."""
    prompts = [e.prompt for e in batch]
    if any(not e.response_ids and not e.finished for e in batch):
        # An empty *finished* answer is just eos; an unfinished one without ids has nothing to score.
        raise TeacherSampleError("an example has no token ids; build examples with examples_from_samples()")
    ids_y = [list(e.response_ids) for e in batch]
    finished = [e.finished for e in batch]
    refusal_ids = response_token_ids(llm, [e.refusal for e in batch], None, True, len(batch))
    if cfg.scoring == "shared_prompt":
        scored_y = response_token_ids(llm, None, ids_y, finished, len(batch))
        with autocast(cfg, llm):
            logq_y, logq_r = shared_prompt_logprobs(
                llm, prompts, [scored_y, refusal_ids], soft, cfg.reduction
            )
    else:
        logq_y = sequence_logprobs(
            llm, prompts, None, reduction=cfg.reduction, append_eos=finished, method=soft, response_ids=ids_y
        )
        logq_r = sequence_logprobs(
            llm,
            prompts,
            None,
            reduction=cfg.reduction,
            append_eos=False,
            method=soft,
            response_ids=refusal_ids,
        )
    device = logq_y.device
    return SequenceTerms(
        logq_y,
        logq_r,
        torch.tensor([e.alpha for e in batch], device=device, dtype=logq_y.dtype),
        torch.tensor([e.response.strip() == e.refusal.strip() for e in batch], device=device),
        [len(i) + f for i, f in zip(ids_y, finished, strict=True)],
        [len(i) for i in refusal_ids],
    )


def autocast(cfg: DistillConfig, llm: LLM) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the model's device when `cfg.autocast` asks for it, else nothing."""
    if cfg.autocast == "bf16":
        return torch.autocast(device_type=llm.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(llm: LLM, soft: Method, batch: Sequence[Example], cfg: DistillConfig) -> BatchLoss:
    """Eq. 4 (or KL-DiSP, or the perplexity baseline) on a batch: the sampled ids are scored exactly, a truncated
    sample without eos."""
    if cfg.objective == "perplexity":
        return _perplexity_loss(llm, soft, batch, cfg)
    t = sequence_terms(llm, soft, batch, cfg)
    weights: dict[str, torch.Tensor] = {}
    if cfg.weighting == "per_token":
        weights["weight_y"] = 1.0 / torch.tensor(t.len_y, device=t.logq_y.device)
        weights["weight_r"] = 1.0 / torch.tensor(t.len_r, device=t.logq_y.device)
    loss = OBJECTIVES[cfg.objective](t.logq_y, t.logq_r, t.alpha, t.same, **weights).mean()
    return BatchLoss(loss, t.logq_y, t.logq_r, t.alpha)


def _perplexity_loss(llm: LLM, method: Method, batch: Sequence[Example], cfg: DistillConfig) -> BatchLoss:
    """Plain NLL of fixed targets: y_r where the prompt is labelled harmful, else the base model's sample y."""
    if any(e.harmful is None for e in batch):
        raise ValueError("the perplexity objective needs each prompt's label: pass labels= to distill()")
    refusal_ids = response_token_ids(llm, [e.refusal for e in batch], None, True, len(batch))
    targets = [r if e.harmful else list(e.response_ids) for e, r in zip(batch, refusal_ids, strict=True)]
    eos = [False if e.harmful else e.finished for e in batch]  # the refusal ids already end in eos
    logq = sequence_logprobs(
        llm,
        [e.prompt for e in batch],
        None,
        reduction=cfg.reduction,
        append_eos=eos,
        method=method,
        response_ids=targets,
    )
    # For the history: log q of the target when it is y (else of y_r), and α as given (the loss ignores it).
    alpha = torch.tensor([e.alpha for e in batch], device=logq.device, dtype=logq.dtype)
    harmful = torch.tensor([bool(e.harmful) for e in batch], device=logq.device)
    nan = torch.full_like(logq, float("nan"))
    return BatchLoss(
        perplexity_loss(logq).mean(),
        torch.where(harmful, nan, logq).detach(),
        torch.where(harmful, logq, nan).detach(),
        alpha,
    )


@torch.no_grad()
def validation_gap(
    llm: LLM,
    soft: Method,
    samples: Sequence[TeacherSample],
    cfg: DistillConfig,
    labels: Mapping[str, bool] | None = None,
) -> tuple[float, float]:
    """(mean loss, mean |p̂(y_r|x) − q(y_r|x)|) on validation samples.

    The second is a Monte-Carlo *lower bound* on the mean TV(p, q): TV ≥ |p(A) − q(A)| for the event A = {y_r}.
    For the reward objectives, whose loss needs fresh samples, the loss reported is TV-DiSP's (Eq. 4): the
    distillation gap every method and objective is compared by.
    """
    examples = examples_from_samples(samples, labels)
    scored = (
        cfg
        if cfg.objective in OBJECTIVES or cfg.objective in TARGET_OBJECTIVES
        else replace(cfg, objective="tv")
    )
    loss = _loss(llm, soft, examples, scored).loss
    prompts = [s.prompt for s in samples]
    logq_r = sequence_logprobs(llm, prompts, [s.refusal for s in samples], reduction="sum", method=soft)
    p_r = torch.tensor([s.refusal_mass for s in samples], device=logq_r.device)
    return float(loss), float((p_r - logq_r.exp()).abs().mean())


def learning_rate(cfg: DistillConfig, step: int) -> float:
    """The learning rate of (0-based) `step` under the config's schedule."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - step / cfg.steps)
    return cfg.lr


def _batch_indices(n: int, cfg: DistillConfig, step: int, micro: int) -> list[int]:
    # A pure function of (seed, step, micro-batch): resuming at any step draws the same batches.
    if cfg.sampling == "epoch":
        start = (step * cfg.grad_accum + micro) * cfg.batch_size
        return [_epoch_order(n, cfg.seed, pos // n)[pos % n] for pos in range(start, start + cfg.batch_size)]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97 + micro)
    return torch.randint(0, n, (cfg.batch_size,), generator=gen).tolist()


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The order epoch `epoch` visits n examples in (a seeded permutation; every example once)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (epoch + 1))
    return tuple(torch.randperm(n, generator=gen).tolist())


def steps_per_epoch(n_examples: int, cfg: DistillConfig) -> int:
    """Steps that visit every example once at the config's effective batch (batch_size x grad_accum)."""
    return math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))


def example_tokens(llm: LLM, example: Example) -> int:
    """The tokens a step scores for `example` beyond the chat template: its prompt and the longer of y and y_r
    (each with its eos), the length that sets the padding of its micro-batch."""
    tok = llm.tokenizer
    prompt = len(tok(example.prompt, add_special_tokens=False)["input_ids"])
    refusal = len(tok(example.refusal, add_special_tokens=False)["input_ids"]) + 1
    return prompt + max(len(example.response_ids) + int(example.finished), refusal)


def micro_batches(
    examples: Sequence[Example], draws: Sequence[Sequence[int]], bucketing: str, length: Any
) -> list[list[Example]]:
    """A step's micro-batches from its draws (one list of indices per micro-batch). "none": as drawn; "length":
    all draws sorted by `length(example)` and cut into micro-batches of the same sizes."""
    if bucketing not in BUCKETINGS:
        raise ValueError(unknown_name_message("bucketing", bucketing, BUCKETINGS))
    if bucketing == "none" or len(draws) < 2:
        return [[examples[i] for i in d] for d in draws]
    ordered = sorted((i for d in draws for i in d), key=lambda i: length(examples[i]))
    out, start = [], 0
    for d in draws:
        out.append([examples[i] for i in ordered[start : start + len(d)]])
        start += len(d)
    return out


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


def history_summary(histories: Mapping[str, History]) -> dict[str, dict[str, float | None]]:
    """{name: final training loss, final validation loss and validation refusal gap (None when not recorded)}."""
    return {
        name: {
            "final_loss": h.loss[-1],
            "final_val_loss": h.val_loss[-1] if h.val_loss else None,
            "final_val_refusal_gap": h.val_refusal_gap[-1] if h.val_refusal_gap else None,
        }
        for name, h in histories.items()
    }


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
        from dispsafe_nb.rl import optimise

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
    from tqdm.auto import tqdm

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
        draws = [_batch_indices(len(examples), cfg, step, micro) for micro in range(cfg.grad_accum)]
        for batch in micro_batches(examples, draws, cfg.bucketing, length):
            out = _loss(llm, method, batch, cfg)
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


def record_validation(
    llm: LLM,
    method: Method,
    val_samples: Sequence[TeacherSample],
    cfg: DistillConfig,
    history: History,
    step: int,
    labels: Mapping[str, bool] | None = None,
) -> float:
    """Append the validation loss and refusal gap at `step` to the history; returns the loss."""
    val_loss, gap = validation_gap(llm, method, val_samples, cfg, labels)
    history.val_step.append(step)
    history.val_loss.append(val_loss)
    history.val_refusal_gap.append(gap)
    return val_loss


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
