"""Theorem 3.1 on the real model: estimate TV(dual system, student) per prompt and compare it with the safety gap.

For a prompt x the dual system outputs r = y with probability α(x, y) (y ~ p_base at temperature 1) and y_r
otherwise. With exact sequence log-probabilities under the base model and the student, and the guard's coin
integrated out (Rao-Blackwell),

    TV(p, q) = E_{r~p} [(1 − q(r)/p(r))_+] ≈ (1/n) Σ_i [ α_i (1 − q(y_i) / (p(y_i) α_i))_+
                                                      + (1 − α_i) (1 − q(y_r) / p̂(y_r))_+ ],

where p̂(y_r) = mean(1 − α_i) estimates the refusal mass (the only part that is not exact). The safety gap is
|E_p f − E_q f| for f = "the answer is safe" (a refusal, for a harmful prompt), with E_q f from student samples.
Theorem 3.1 says the gap never exceeds TV; here both sides are Monte-Carlo estimates with standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dispsafe_nb.guards import Guard
from dispsafe_nb.judges import RefusalJudge, judge_for_kind
from dispsafe_nb.models import LLM, DecodingConfig, Generation, generate_with_prefix, samples_per_prompt
from dispsafe_nb.objectives import sequence_logprobs
from dispsafe_nb.safe_system import prompt_seed


@dataclass
class BoundCheck:
    """Per-prompt estimates: TV (with its standard error) and the safety gap (with its standard error)."""

    prompt: str
    tv: float
    tv_se: float
    gap: float
    gap_se: float
    teacher_safe: float
    student_safe: float
    refusal_mass: float

    @property
    def holds(self) -> bool:
        """Does gap ≤ TV hold within two standard errors of their difference?"""
        return self.gap - self.tv <= 2.0 * math.hypot(self.tv_se, self.gap_se) + 1e-12


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
    return {
        "real_bound_holds_fraction": sum(c.holds for c in checks) / len(checks),
        "real_informative_prompts": len(informative),
        "real_bound_holds_fraction_informative": (
            sum(c.holds for c in informative) / len(informative) if informative else float("nan")
        ),
        "real_max_gap_minus_tv": max(c.gap - c.tv for c in checks),
        "real_mean_tv": sum(c.tv for c in checks) / len(checks),
        "real_mean_gap": sum(c.gap for c in checks) / len(checks),
    }


def _logprobs(llm: LLM, prompt: str, samples: Sequence[Generation], method: Any) -> torch.Tensor:
    """log p(y | x) of exactly the sampled ids; a finished sample with its eos, a truncated one as a prefix."""
    lp = sequence_logprobs(
        llm,
        [prompt] * len(samples),
        None,
        append_eos=[g.finished for g in samples],
        method=method,
        response_ids=[g.token_ids for g in samples],
    )
    return lp.detach().double().cpu()


@torch.no_grad()
def check_bound(
    llm: LLM,
    guard: Guard,
    student: Any,
    prompts: Sequence[str],
    harmful: Sequence[bool],
    refusal: str,
    n_samples: int = 16,
    max_new_tokens: int = 48,
    seed: int = 0,
    judge: RefusalJudge | None = None,
) -> list[BoundCheck]:
    """Estimate TV(dual, student) and the safety gap per prompt. `student` is a soft prompt (anything with
    `apply`, as `sequence_logprobs` takes) or None for the base model itself."""
    results = []
    for prompt, is_harmful in zip(prompts, harmful, strict=True):
        # each prompt's benchmark rule (JailbreakBench's strings on harmful prompts, XSTest's prefixes on safe ones)
        prompt_judge = judge or judge_for_kind("harmful" if is_harmful else "borderline", refusal)
        decoding = DecodingConfig(
            max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=prompt_seed(prompt, seed)
        )
        gens = llm.generate_detailed([prompt], decoding, num_samples=n_samples)[0]
        ys = [g.text for g in gens]
        alpha = guard.prob_safe([prompt] * n_samples, ys).double()
        log_p = _logprobs(llm, prompt, gens, None)
        log_q = _logprobs(llm, prompt, gens, student)
        log_q_r = sequence_logprobs(llm, [prompt], [refusal], method=student)[0].detach().double().cpu()
        p_r = (1.0 - alpha).mean().clamp(min=1e-12)
        terms = tv_terms(alpha, log_p, log_q, log_q_r, p_r)
        # f = safe: a refusal is safe; an answer is safe iff the prompt is benign (the judge's prob_safe).
        f_y = prompt_judge.prob_safe([prompt] * n_samples, [is_harmful] * n_samples, ys).double()
        teacher_f = alpha * f_y + (1 - alpha) * 1.0
        student_ys = generate_with_prefix(
            llm,
            [prompt],
            None if student is None else student.prefix().detach(),
            decoding,
            num_samples=n_samples,
        )
        student_ys = samples_per_prompt(student_ys, n_samples)[0]
        student_f = prompt_judge.prob_safe(
            [prompt] * n_samples, [is_harmful] * n_samples, student_ys
        ).double()
        se = lambda x: float(x.std(unbiased=True) / math.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
        results.append(
            BoundCheck(
                prompt=prompt,
                tv=float(terms.mean()),
                tv_se=se(terms),
                gap=abs(float(teacher_f.mean() - student_f.mean())),
                gap_se=math.hypot(se(teacher_f), se(student_f)),
                teacher_safe=float(teacher_f.mean()),
                student_safe=float(student_f.mean()),
                refusal_mass=float(p_r),
            )
        )
    return results
