"""Theorem 3.1 on the real model: estimate TV(dual system, student) per prompt and compare it with score gaps.

The dual system p is the teacher the students are trained on: the base LLM π sampled at the teacher's decoding
(temperature 0.7, nucleus 0.95: π is that tempered, truncated distribution), each answer kept with probability
α(x, y), else y_r. The student q is the frozen LLM with the soft prompt, at temperature 1 (the distribution
distillation fits). With exact sequence log-probabilities of the sampled token ids under π and q, and the guard's
coin integrated out (Rao-Blackwell),

    TV(p, q) = E_{r~p} [(1 − q(r)/p(r))_+] ≈ (1/n) Σ_i [ α_i (1 − q(y_i) / (π(y_i) α_i))_+
                                                      + (1 − α_i) (1 − q(y_r) / p̂(y_r))_+ ],   y_i ~ π,

where p̂(y_r) = mean(1 − α_i) estimates the refusal mass (the only part that is not exact). It is an *estimate*:
with few samples it is biased upward (p̂ enters through the convex (p̂ − q)_+, so Jensen pushes it up), never a
guaranteed lower bound; its standard error treats the terms as independent, ignoring that they share p̂. Two test functions f give gaps |E_p f − E_q f| (E_q f from student samples): f = "the answer is safe"
(a refusal, or any answer to a safe prompt: constant 1 on safe prompts), and f = "the answer is a refusal", which
on safe prompts is over-refusal -- where the bound says something about it. Theorem 3.1 says no gap exceeds TV;
here both sides are Monte-Carlo estimates with standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from dispsafe_nb.core.decoding import TEACHER_DECODING, DecodingConfig, samples_per_prompt
from dispsafe_nb.core.llm import LLM, Generation, generate_with_prefix
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.evaluation.judges import RefusalJudge, judge_for_kind
from dispsafe_nb.guards.protocol import Guard
from dispsafe_nb.methods.base import Method


@dataclass
class BoundCheck:
    """Per-prompt estimates: TV, the safety gap and the refusal gap, each with its standard error."""

    prompt: str
    tv: float
    tv_se: float
    gap: float
    gap_se: float
    teacher_safe: float
    student_safe: float
    refusal_mass: float
    refusal_gap: float = 0.0
    refusal_gap_se: float = 0.0
    teacher_refusal: float = 0.0
    student_refusal: float = 0.0
    teacher_answers_safe: float = 0.0  # the LLM's own answers, before the guard
    student_refusal_prob: float = 0.0  # q(y_r | x), exact

    @property
    def refusal_event_excess(self) -> float:
        """p̂(y_r) − q(y_r) − TV: never above 0 for this estimator, whose refusal terms alone average to
        (p̂(y_r) − q(y_r))_+ -- the event {y_r} of Theorem 3.1's variational form, exactly."""
        return self.refusal_mass - self.student_refusal_prob - self.tv

    @property
    def holds(self) -> bool:
        """Does safety gap ≤ TV hold within two standard errors of their difference?"""
        return self.gap - self.tv <= 2.0 * math.hypot(self.tv_se, self.gap_se) + 1e-12

    @property
    def refusal_holds(self) -> bool:
        """Does refusal gap ≤ TV hold within two standard errors of their difference?"""
        return self.refusal_gap - self.tv <= 2.0 * math.hypot(self.tv_se, self.refusal_gap_se) + 1e-12


def tv_terms(
    alpha: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor, log_q_r: torch.Tensor, p_r: torch.Tensor
) -> torch.Tensor:
    """The per-sample terms whose mean estimates TV(dual, student) (module docstring): for each y_i ~ p_base,
    α_i (1 − q(y_i) / (p(y_i) α_i))_+ + (1 − α_i)(1 − q(y_r) / p̂(y_r))_+."""
    # q(y)/(p(y) α): α cancels against p(r = y) = p(y) α; computed in log space.
    ratio_y = torch.exp(log_q - log_p - torch.log(alpha.clamp(min=1e-12)))
    return alpha * (1 - ratio_y).clamp(min=0) + (1 - alpha) * (1 - torch.exp(log_q_r) / p_r).clamp(min=0)


def summarise(checks: Sequence[BoundCheck], informative_below: float = 0.99) -> dict[str, float]:
    """The share of prompts where gap <= TV holds, overall and where the bound is *informative*: where the TV
    estimate is below `informative_below` (a TV near 1 bounds every gap, so holding there proves nothing)."""
    if not checks:
        raise ValueError("no bound checks to summarise")
    informative = [c for c in checks if c.tv < informative_below]

    def share(flags: Sequence[bool]) -> float:
        return sum(flags) / len(flags) if flags else float("nan")

    return {
        "real_bound_holds_fraction": share([c.holds for c in checks]),
        "real_informative_prompts": len(informative),
        "real_bound_holds_fraction_informative": share([c.holds for c in informative]),
        "real_max_gap_minus_tv": max(c.gap - c.tv for c in checks),
        "real_refusal_bound_holds_fraction": share([c.refusal_holds for c in checks]),
        "real_refusal_bound_holds_fraction_informative": share([c.refusal_holds for c in informative]),
        "real_max_refusal_gap_minus_tv": max(c.refusal_gap - c.tv for c in checks),
        "real_max_refusal_event_excess": max(c.refusal_event_excess for c in checks),
        "real_mean_tv": sum(c.tv for c in checks) / len(checks),
        "real_mean_gap": sum(c.gap for c in checks) / len(checks),
        "real_mean_refusal_gap": sum(c.refusal_gap for c in checks) / len(checks),
    }


def _logprobs(
    llm: LLM,
    prompt: str,
    samples: Sequence[Generation],
    method: Method,
    decoding: DecodingConfig | None = None,
) -> torch.Tensor:
    """log p(y | x) of exactly the sampled ids (under `decoding`'s tempered, truncated distribution when given);
    a finished sample with its eos, a truncated one as a prefix."""
    lp = sequence_logprobs(
        llm,
        [prompt] * len(samples),
        None,
        append_eos=[g.finished for g in samples],
        method=method,
        response_ids=[g.token_ids for g in samples],
        temperature=decoding.temperature if decoding else 1.0,
        top_p=decoding.top_p if decoding else 1.0,
        keep_targets=True,  # the sampler drew these very tokens
    )
    return lp.detach().double().cpu()


def _se(x: torch.Tensor) -> float:
    return float(x.std(unbiased=True) / math.sqrt(len(x))) if len(x) > 1 else 0.0


@torch.no_grad()
def check_bound(
    llm: LLM,
    guard: Guard,
    student: Method | None,
    prompts: Sequence[str],
    harmful: Sequence[bool],
    refusal: str,
    n_samples: int = 16,
    max_new_tokens: int = TEACHER_DECODING.max_new_tokens,
    seed: int = 0,
    judge: RefusalJudge | None = None,
    teacher_temperature: float = TEACHER_DECODING.temperature,
    teacher_top_p: float = TEACHER_DECODING.top_p,
) -> list[BoundCheck]:
    """Estimate TV(dual, student), the safety gap and the refusal gap per prompt (module docstring). `student`
    is a soft prompt (anything with `apply` and `prefix`) or None for the base model itself. The teacher samples
    at `teacher_temperature` / `teacher_top_p` (the training teacher's by default); the student at temperature 1."""
    results = []
    for prompt, is_harmful in zip(prompts, harmful, strict=True):
        # each prompt's benchmark rule (JailbreakBench's strings on harmful prompts, XSTest's prefixes on safe ones)
        prompt_judge = judge or judge_for_kind("harmful" if is_harmful else "borderline", refusal)
        teacher = DecodingConfig(
            max_new_tokens, temperature=teacher_temperature, top_p=teacher_top_p, seed=seed
        )
        gens = llm.generate_detailed([prompt], decoding=teacher, num_samples=n_samples, per_prompt_seed=True)[
            0
        ]
        ys = [g.text for g in gens]
        alpha = guard.prob_safe([prompt] * n_samples, ys).double()
        log_p = _logprobs(llm, prompt, gens, None, teacher)
        log_q = _logprobs(llm, prompt, gens, student)
        log_q_r = sequence_logprobs(llm, [prompt], [refusal], method=student)[0].detach().double().cpu()
        p_r = (1.0 - alpha).mean().clamp(min=1e-12)
        terms = tv_terms(alpha, log_p, log_q, log_q_r, p_r)
        # the student's own distribution, from its own seeded stream (not the teacher's draws)
        own = DecodingConfig(max_new_tokens, temperature=1.0, top_p=1.0, seed=seed + 1)
        prefix = None if student is None else student.prefix().detach()
        student_ys = generate_with_prefix(
            llm, [prompt], prefix, own, num_samples=n_samples, per_prompt_seed=True
        )
        student_ys = samples_per_prompt(student_ys, n_samples)[0]
        flags = [is_harmful] * n_samples
        # f = safe: a refusal is safe; an answer is safe iff the prompt is benign (the judge's prob_safe).
        answers_f = prompt_judge.prob_safe([prompt] * n_samples, flags, ys).double()
        teacher_f = alpha * answers_f + (1 - alpha)
        student_f = prompt_judge.prob_safe([prompt] * n_samples, flags, student_ys).double()
        # f = refused: y_r always; a kept answer when the judge reads it as a refusal
        teacher_r = alpha * prompt_judge.refusals(ys).double() + (1 - alpha)
        student_r = prompt_judge.refusals(student_ys).double()
        results.append(
            BoundCheck(
                prompt=prompt,
                tv=float(terms.mean()),
                tv_se=_se(terms),
                gap=abs(float(teacher_f.mean() - student_f.mean())),
                gap_se=math.hypot(_se(teacher_f), _se(student_f)),
                teacher_safe=float(teacher_f.mean()),
                student_safe=float(student_f.mean()),
                refusal_mass=float(p_r),
                refusal_gap=abs(float(teacher_r.mean() - student_r.mean())),
                refusal_gap_se=math.hypot(_se(teacher_r), _se(student_r)),
                teacher_refusal=float(teacher_r.mean()),
                student_refusal=float(student_r.mean()),
                teacher_answers_safe=float(answers_f.mean()),
                student_refusal_prob=float(log_q_r.exp()),
            )
        )
    return results


def bound_table(checks: Sequence[BoundCheck], kinds: Sequence[str]) -> Any:
    """One row per prompt: its kind, TV, both gaps (with standard errors), sampled safety and refusal of teacher
    and student, whether each bound holds, and the prompt's start (a pandas DataFrame)."""

    if len(checks) != len(kinds):
        raise ValueError(f"{len(checks)} checks but {len(kinds)} kinds")
    rows = [
        {
            "kind": kind,
            "TV": c.tv,
            "TV se": c.tv_se,
            "safety gap": c.gap,
            "gap se": c.gap_se,
            "refusal gap": c.refusal_gap,
            "refusal gap se": c.refusal_gap_se,
            "teacher safe": c.teacher_safe,
            "student safe": c.student_safe,
            "teacher refuses": c.teacher_refusal,
            "student refuses": c.student_refusal,
            "holds (safety)": c.holds,
            "holds (refusal)": c.refusal_holds,
            "prompt": c.prompt[:60],
        }
        for kind, c in zip(kinds, checks, strict=True)
    ]
    return pd.DataFrame(rows)
