"""Did distillation work? Measurements of a trained student against its own starting point.

A smoke-sized run cannot show that a student is *good*, but it can show that training did what it should, each
measured against the right reference (the initial soft prompt, which already asks for refusals in words, not
the bare model):

* the prompt moved (relative change of W);
* the loss on all training examples and on held-out validation samples fell from step 0;
* the refusal y_r became more likely on held-out harmful prompts, and more so than on held-out benign ones;
* the teacher's α separates harmful from benign training prompts (what the student is meant to learn).

Notebook 03 emits these; `dispsafe_nb.report.notebook_checks` turns them into named checks, and `tests/test_sabotage.py`
shows each check failing under a deliberately broken pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from dispsafe_nb import theory
from dispsafe_nb.common.classifier_stats import auroc
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.methods import SoftPrompt, init_soft_prompt
from dispsafe_nb.system.teacher_cache import TeacherSample
from dispsafe_nb.training.batch_loss import BatchLoss, sequence_terms
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import examples_from_samples

# A short compliant reply: if training raised it as much as the refusal, the student learnt "answer briefly",
# not "refuse" (the refusal's gain alone cannot tell these apart after a few steps).
CONTROL_REPLY = "Sure, here is how to do that."


def initial_prompt(llm: LLM, cfg: DistillConfig) -> SoftPrompt:
    """The soft prompt `distill` starts from under `cfg` (the same init and seed, hence the same W)."""
    return init_soft_prompt(llm, cfg.n_tokens, cfg.init, cfg.init_text, cfg.seed)


@torch.no_grad()
def full_data_loss(
    llm: LLM, soft: SoftPrompt, samples: Sequence[TeacherSample], cfg: DistillConfig, batch_size: int = 16
) -> float:
    """The mean loss of Eq. 4 (or KL-DiSP, by `cfg.objective`) over every example of `samples`, unweighted.

    Computed with the reference formulas of `theory` rather than the training code's, so that a broken training
    loss cannot make its own measurement look good (minibatch losses are too noisy to compare anyway)."""
    examples = examples_from_samples(samples)
    if not examples:
        raise ValueError("no examples: pass teacher samples for at least one prompt")
    reference = {"tv": theory.tv_disp_loss, "kl": theory.kl_disp_loss}[cfg.objective]
    total = 0.0
    for i in range(0, len(examples), batch_size):
        t = sequence_terms(llm, soft, examples[i : i + batch_size], cfg)
        ly, lr = t.logq_y.double().cpu(), t.logq_r.double().cpu()
        loss = reference(ly, lr, t.alpha.double().cpu())
        # where the sample *is* the refusal the two atoms merge: the loss is -log q(y_r) (theory, caveat ii)
        loss = torch.where(t.same.cpu(), -lr, loss)
        total += float(loss.sum())
    return total / len(examples)


@torch.no_grad()
def refusal_logprobs(llm: LLM, soft: SoftPrompt, prompts: Sequence[str], refusal: str) -> torch.Tensor:
    """log q(y_r | x) per prompt under the soft-prompted model (whole sequence, with its end-of-turn)."""
    return sequence_logprobs(llm, list(prompts), [refusal] * len(prompts), method=soft).double().cpu()


@torch.no_grad()
def answer_logprobs(
    llm: LLM, soft: SoftPrompt | None, prompts: Sequence[str], answers: Sequence
) -> torch.Tensor:
    """log q(y|x) of given `Generation`s (their exact ids; a truncated answer without eos)."""
    return (
        sequence_logprobs(
            llm,
            list(prompts),
            None,
            append_eos=[g.finished for g in answers],
            method=soft,
            response_ids=[list(g.token_ids) for g in answers],
        )
        .double()
        .cpu()
    )


@torch.no_grad()
def clip_fractions_by_kind(
    llm: LLM,
    soft: SoftPrompt,
    samples: Sequence[TeacherSample],
    kind_of: Mapping[str, str],
    cfg: DistillConfig,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """{prompt kind: {"y": share, "y_r": share, "n": examples}}: how many training examples of each kind have
    their y term / y_r term switched off by Eq. 4's clip under the soft prompt (q at or above its teacher mass).
    `kind_of` maps each prompt to its kind (e.g. harmful, benign, borderline)."""
    examples = examples_from_samples(samples)
    missing = sorted({e.prompt for e in examples} - set(kind_of))
    if missing:
        raise KeyError(f"{len(missing)} prompt(s) have no kind, e.g. {missing[0][:60]!r}")
    counts: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        t = sequence_terms(llm, soft, batch, cfg)
        loss = BatchLoss(t.logq_y, t.logq_y, t.logq_r, t.alpha)
        for e, y_on, r_on in zip(batch, *loss.clipped_each(), strict=True):
            row = counts.setdefault(kind_of[e.prompt], [0.0, 0.0, 0])
            row[0], row[1], row[2] = row[0] + y_on, row[1] + r_on, row[2] + 1
    return {k: {"y": y / n, "y_r": r / n, "n": n} for k, (y, r, n) in sorted(counts.items())}


def teacher_alpha_auroc(samples: Sequence[TeacherSample], harmful: Sequence[bool]) -> float:
    """How well the teacher's mean α per prompt ranks benign above harmful training prompts (AUROC; 0.5 = no
    signal, which is what a student would then learn)."""
    if len(samples) != len(harmful):
        raise ValueError(f"{len(samples)} samples but {len(harmful)} harmful flags")
    mean_alpha = [sum(s.alphas) / len(s.alphas) for s in samples]
    return auroc(mean_alpha, [not h for h in harmful])


def student_diagnostics(
    llm: LLM,
    soft: SoftPrompt,
    cfg: DistillConfig,
    train_samples: Sequence[TeacherSample],
    val_samples: Sequence[TeacherSample],
    heldout_harmful: Sequence[str],
    heldout_benign: Sequence[str],
    refusal: str,
    answer_tokens: int = 16,
) -> dict[str, Any]:
    """Every measurement of the module docstring for one trained student, against its initial prompt.

    `refusal` is the refusal the *evaluation* counts (the safe system's), not whatever the samples carry: a
    student trained towards another string must show no gain here. Held-out prompts must come from outside the
    training prompts (e.g. the validation or test split).

    The control gain is that of `CONTROL_REPLY`, a short compliant reply, on the same prompts. The refusal
    *preference* on held-out harmful prompts is log q(y_r|x) − log q(y_base|x), with y_base the base
    model's own greedy answer (`answer_tokens` long at most): a gain there means training moved mass towards the
    refusal rather than raising every short reply.
    """
    if not heldout_harmful or not heldout_benign:
        raise ValueError("give at least one held-out harmful and one held-out benign prompt")
    start = initial_prompt(llm, cfg)
    if start.W.shape != soft.W.shape:
        raise ValueError(
            f"the student has shape {tuple(soft.W.shape)}, its config says {tuple(start.W.shape)}"
        )
    change = float((soft.W.detach() - start.W.detach()).norm() / start.W.detach().norm().clamp(min=1e-12))
    gain_h = refusal_logprobs(llm, soft, heldout_harmful, refusal) - refusal_logprobs(
        llm, start, heldout_harmful, refusal
    )
    gain_b = refusal_logprobs(llm, soft, heldout_benign, refusal) - refusal_logprobs(
        llm, start, heldout_benign, refusal
    )
    control = refusal_logprobs(llm, soft, heldout_harmful, CONTROL_REPLY) - refusal_logprobs(
        llm, start, heldout_harmful, CONTROL_REPLY
    )
    greedy = DecodingConfig(max_new_tokens=answer_tokens, seed=cfg.seed)
    base_answers = [g[0] for g in llm.generate_detailed(list(heldout_harmful), decoding=greedy)]

    def preference(w: SoftPrompt) -> torch.Tensor:
        return refusal_logprobs(llm, w, heldout_harmful, refusal) - answer_logprobs(
            llm, w, heldout_harmful, base_answers
        )

    out: dict[str, Any] = {
        "weight_change": change,
        "train_loss_initial": full_data_loss(llm, start, train_samples, cfg),
        "train_loss_final": full_data_loss(llm, soft, train_samples, cfg),
        "refusal_logprob_gain_harmful": float(gain_h.mean()),
        "refusal_logprob_gain_benign": float(gain_b.mean()),
        "control_logprob_gain_harmful": float(control.mean()),
        "refusal_preference_gain_harmful": float((preference(soft) - preference(start)).mean()),
        "n_heldout_harmful": len(heldout_harmful),
        "n_heldout_benign": len(heldout_benign),
        "objective": cfg.objective,
        "config": asdict(cfg),
    }
    if val_samples:
        out["val_loss_initial"] = full_data_loss(llm, start, val_samples, cfg)
        out["val_loss_final"] = full_data_loss(llm, soft, val_samples, cfg)
    return out
