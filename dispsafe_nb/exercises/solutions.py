"""The exercises' reference solutions: what `show_solution` prints and what every checker compares with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dispsafe_nb.data.mixes import water_fill
from dispsafe_nb.evaluation.judges import XSTEST_REFUSAL_PREFIXES


def tv_and_event(p: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """TV(p, q) and an event A (boolean mask over outcomes) with p(A) - q(A) = TV(p, q)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    event = p > q
    return float(0.5 * np.abs(p - q).sum()), event


def two_point_tv(alpha: float, q_y: float, q_r: float) -> float:
    """TV between the teacher given y, a_y = alpha·δ_y + (1 - alpha)·δ_{y_r}, and a student that gives y mass
    q_y, the refusal y_r mass q_r and everything else the rest."""
    # a_y has no mass outside {y, y_r}: the positive parts of a_y - q live on its two atoms only
    return max(alpha - q_y, 0.0) + max(1.0 - alpha - q_r, 0.0)


def clipped_nll(log_q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One term of Eq. 4: w·[log(w / q)]_+ = -w·min(log q - log w, 0); exactly 0 (and flat) where w = 0."""
    pos = w > 0
    log_w = torch.log(torch.where(pos, w, torch.ones_like(w)))
    gap = torch.where(pos, log_q, torch.zeros_like(log_q)) - log_w
    return torch.where(pos, -w * torch.clamp(gap, max=0.0), torch.zeros_like(gap))


def refusal_logit_gradient(q_y: float, q_r: float, alpha: float, loss: str = "tv") -> float:
    """dL/dz_r, the gradient of one sample's TV-DiSP (or KL-DiSP) loss with respect to the refusal's logit of a
    softmax student (y != y_r)."""
    y_on = 1.0 if loss == "kl" or q_y < alpha else 0.0
    r_on = 1.0 if loss == "kl" or q_r < 1.0 - alpha else 0.0
    # d log q_y / dz_r = -q_r and d log q_r / dz_r = 1 - q_r
    return y_on * alpha * q_r - r_on * (1.0 - alpha) * (1.0 - q_r)


def mc_tv_estimate(log_p: np.ndarray, log_q: np.ndarray) -> tuple[float, float]:
    """(estimate, standard error) of TV(p, q) from samples r_i ~ p, given log p(r_i) and log q(r_i)."""
    terms = np.clip(1.0 - np.exp(np.asarray(log_q) - np.asarray(log_p)), 0.0, None)
    se = terms.std(ddof=1) / math.sqrt(len(terms)) if len(terms) > 1 else 0.0
    return float(terms.mean()), float(se)


def dual_system_distribution(base: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """p(r | x) of the safe system over the base model's answers and, last, the refusal: each answer y keeps
    base(y)·alpha(y); the refusal collects the rest."""
    base, alpha = np.asarray(base, dtype=float), np.asarray(alpha, dtype=float)
    kept = base * alpha
    return np.append(kept, base.sum() - kept.sum())


def xstest_refusal_rate(responses: Sequence[str]) -> float:
    """The share of responses XSTest's string rule counts as refusals: lower-cased and stripped, it starts with
    one of `XSTEST_REFUSAL_PREFIXES` (`dispsafe_nb.evaluation.judges`)."""
    if not responses:
        raise ValueError("no responses")
    return sum(r.lower().strip().startswith(XSTEST_REFUSAL_PREFIXES) for r in responses) / len(responses)


def eq4_loss(logq_y: torch.Tensor, logq_r: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 4 per example from whole-sequence log-probs: -a·min(log q_y - log a, 0) - (1-a)·min(log q_r - log(1-a), 0)."""
    return clipped_nll(logq_y, alpha) + clipped_nll(logq_r, 1.0 - alpha)


def clip_fractions(logq_y: torch.Tensor, logq_r: torch.Tensor, alpha: torch.Tensor) -> tuple[float, float]:
    """Shares of examples whose y term and whose y_r term Eq. 4 has switched off (q at or above its teacher mass;
    a term of zero weight counts as not clipped)."""
    on_y = (alpha > 0) & (logq_y >= torch.log(alpha.clamp(min=1e-300)))
    on_r = (alpha < 1) & (logq_r >= torch.log((1 - alpha).clamp(min=1e-300)))
    return float(on_y.double().mean()), float(on_r.double().mean())


def dual_refusal_probability(alphas: Sequence[float], refused: Sequence[bool]) -> float:
    """The probability that the dual system (sampling form: keep y with probability α) answers with a refusal,
    estimated from k samples y_i ~ p(y | x): each sample is replaced with probability 1 - α_i, and kept but itself
    a refusal (`refused[i]`) otherwise; the estimate is the mean of (1 - α_i) + α_i · refused_i."""
    if len(alphas) != len(refused) or not alphas:
        raise ValueError("give one α and one refusal flag per sample (at least one)")
    return float(np.mean([(1 - a) + a * float(r) for a, r in zip(alphas, refused, strict=True)]))


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE's leave-one-out advantages: each sample's reward minus the mean reward of the prompt's other
    samples (rewards: prompts x k, k >= 2)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    k = rewards.shape[1]
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def decode_flops_per_token(arch: Any, context: int) -> int:
    """Matrix-product FLOPs of one generated token whose query attends to `context` keys: per layer the q, k, v, o
    projections, attention over the context and the gated MLP, then the vocabulary head (2 FLOPs per
    multiply-add)."""
    d, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    per_layer = (
        2 * (d * q + 2 * d * kv + q * d) + 4 * arch.heads * arch.head_dim * context + 2 * 3 * d * arch.ffn
    )
    return arch.layers * per_layer + 2 * d * arch.vocab


def share_out(need: int, sizes: dict[str, int]) -> dict[str, int]:
    """`need` prompts taken from sources of the given sizes as evenly as they allow: equal shares, each source up
    to its size, what a small source cannot give taken from the others (max-min fair)."""

    return water_fill(need, sizes)
