"""The loss of a batch of examples under every objective, with the per-sequence terms behind it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import response_token_ids, sequence_logprobs
from dispsafe_nb.core.shared_prompt import shared_prompt_logprobs
from dispsafe_nb.methods import Method
from dispsafe_nb.system.teacher_cache import TeacherSample, TeacherSampleError
from dispsafe_nb.training.config import OBJECTIVES, TARGET_OBJECTIVES
from dispsafe_nb.training.examples import examples_from_samples
from dispsafe_nb.training.objectives import perplexity_loss

if TYPE_CHECKING:
    from dispsafe_nb.training.config import DistillConfig
    from dispsafe_nb.training.examples import Example


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


def batch_loss_of(llm: LLM, soft: Method, batch: Sequence[Example], cfg: DistillConfig) -> BatchLoss:
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
    loss = batch_loss_of(llm, soft, examples, scored).loss
    prompts = [s.prompt for s in samples]
    logq_r = sequence_logprobs(llm, prompts, [s.refusal for s in samples], reduction="sum", method=soft)
    p_r = torch.tensor([s.refusal_mass for s in samples], device=logq_r.device)
    return float(loss), float((p_r - logq_r.exp()).abs().mean())
