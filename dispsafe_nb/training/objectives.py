"""Training objectives on the real model: teacher-forced sequence log-probs and the distillation losses.

`sequence_logprobs` scores whole responses under the student ``q(r | x, W)``; the losses then work on the
per-example log-probs (tensors of shape (B,)) and return per-example losses (callers average):

* ``tv_disp_loss``  (paper Eq. 4)  ``L_TV = -a [log q(y) - log a]_- - (1 - a) [log q(y_r) - log(1 - a)]_-``
* ``kl_disp_loss``                ``L_KL = -a log q(y) - (1 - a) log q(y_r)``
* ``perplexity_loss``             plain NLL ``-log q(target)`` (baseline)
* ``reinforce_loss``              policy-gradient surrogate ``-(r - b) log q(y)`` (baseline; `dispsafe_nb.training.rl`
                                  passes leave-one-out advantages as r with b = 0)

The conventions (zero-weight terms exactly 0 with zero gradient, strict clip at ``q = w``) are those of
:mod:`dispsafe_nb.theory`, which holds the exact two-point versions and their proofs; the tests check that
both agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dispsafe_nb.theory.surrogates import weighted_clipped_nll, weighted_nll

# A per-example value given as a tensor, a number (the same for every example) or a sequence of numbers.
TensorLike = torch.Tensor | float | Sequence[float] | Sequence[bool]

# ----------------------------------------------------------------------------------------------------------
# distillation losses (per example; callers average)
# ----------------------------------------------------------------------------------------------------------


def _as_constant(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A detached tensor of `dtype`. Python floats (and lists, arrays) go straight to `dtype`: going through
    torch's default float32 first would round α = 0.05 and move the clip off log α for float64 log-probs."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(x, dtype=dtype, device=device)


def _prepare(
    logq_y: torch.Tensor, logq_r: torch.Tensor, alpha: Any, same_as_refusal: Any | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    logq_y, logq_r = torch.as_tensor(logq_y), torch.as_tensor(logq_r)
    dtype = torch.promote_types(logq_y.dtype, logq_r.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a = _as_constant(alpha, dtype, logq_y.device)
    with torch.no_grad():
        if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise ValueError("alpha must lie in [0, 1] (a probability that the exchange is safe)")
    ly, lr, a = torch.broadcast_tensors(logq_y.to(dtype), logq_r.to(dtype), a)
    same = None
    if same_as_refusal is not None:
        same = torch.as_tensor(same_as_refusal, device=ly.device).to(torch.bool).broadcast_to(ly.shape)
    return ly, lr, a, same


def _merge_refusal(loss: torch.Tensor, lr: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
    """Where the sampled y *is* the refusal, the two atoms merge into delta_{y_r}: the loss is -log q(y_r)."""
    if same is None:
        return loss
    return torch.where(same, -lr, loss)


def _weights(w: Any | None, like: torch.Tensor) -> torch.Tensor:
    """Per-term weights (1 when None): constants that scale a term, never its clip threshold."""
    if w is None:
        return torch.ones_like(like)
    w = _as_constant(w, like.dtype, like.device)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("term weights must be finite and >= 0")
    return w.broadcast_to(like.shape)


def tv_disp_loss(
    logq_y: torch.Tensor,
    logq_r: torch.Tensor,
    alpha: TensorLike,
    same_as_refusal: TensorLike | None = None,
    weight_y: TensorLike | None = None,
    weight_r: TensorLike | None = None,
) -> torch.Tensor:
    """TV-DiSP (paper Eq. 4), per example:
    ``L_TV = -a min(log q(y) - log a, 0) - (1 - a) min(log q(y_r) - log(1 - a), 0)``.

    ``a = alpha`` is the guard's soft probability that (x, y) is safe (treated as a constant). The gradient
    w.r.t. ``log q(y)`` is ``-a`` while ``q(y) < a`` and exactly 0 once ``q(y) >= a`` (the student already
    gives y its teacher mass); likewise for the refusal at ``1 - a``. a in {0, 1} is safe: the zero-weight
    term is exactly 0 with zero gradient. ``same_as_refusal`` (bool, per example): the sampled y equals the
    refusal string, so the teacher's two atoms merge and the loss is ``-log q(y_r)`` (weight 1).
    See :func:`dispsafe_nb.theory.tv_disp_loss` for why E_y L_TV upper-bounds TV(p, q).

    ``weight_y`` / ``weight_r`` (optional, per example) scale each term, e.g. 1 / its token count when whole-
    sequence log-probs of very different lengths must be balanced for optimisation. They never move the clip:
    with sequence log-probs the thresholds stay ``log a`` and ``log(1 - a)`` (Eq. 4), unlike a per-token mean
    of the log-probs, which turns them into ``a^T`` and ``(1 - a)^T``.
    """
    ly, lr, a, same = _prepare(logq_y, logq_r, alpha, same_as_refusal)
    wy, wr = _weights(weight_y, ly), _weights(weight_r, lr)
    loss = wy * weighted_clipped_nll(ly, a) + wr * weighted_clipped_nll(lr, 1.0 - a)
    return _merge_refusal(loss, wr * lr, same)


def kl_disp_loss(
    logq_y: torch.Tensor,
    logq_r: torch.Tensor,
    alpha: TensorLike,
    same_as_refusal: TensorLike | None = None,
    weight_y: TensorLike | None = None,
    weight_r: TensorLike | None = None,
) -> torch.Tensor:
    """KL-DiSP, per example: the alpha-weighted NLL ``L_KL = -a log q(y) - (1 - a) log q(y_r)``.

    Forward KL(p || q) on the two-point teacher up to the constant entropy of a. Zero-weight terms are exactly
    0; ``same_as_refusal`` and the weights as in :func:`tv_disp_loss` (note: unlike TV's clip, KL's optimum
    moves with the weights: ``q(y_r) ∝ w_r (1 - a)``).
    """
    ly, lr, a, same = _prepare(logq_y, logq_r, alpha, same_as_refusal)
    wy, wr = _weights(weight_y, ly), _weights(weight_r, lr)
    loss = wy * weighted_nll(ly, a) + wr * weighted_nll(lr, 1.0 - a)
    return _merge_refusal(loss, wr * lr, same)


def perplexity_loss(logq: torch.Tensor) -> torch.Tensor:
    """Plain NLL ``-log q(target)`` per example (the perplexity baseline: fit fixed target responses).

    With ``sequence_logprobs(..., reduction="mean")`` this is the per-token NLL, whose exp is the perplexity.
    """
    return -torch.as_tensor(logq)


def reinforce_loss(
    logq_samples: torch.Tensor, rewards: TensorLike, baseline: str | float | None = "mean"
) -> torch.Tensor:
    """REINFORCE surrogate per example: ``-(r - b) * log q(y)`` with y sampled from the student.

    Its gradient is the policy-gradient estimate of ``-E_q[r]``. Rewards (e.g. the guard's safety probability)
    are constants (detached). baseline: "mean" (b = mean reward over the batch, a variance reducer that keeps
    the estimate nearly unbiased), "none"/None (b = 0), or a number.
    """
    logq = torch.as_tensor(logq_samples)
    r = torch.as_tensor(rewards, device=logq.device).detach().to(logq.dtype)
    if baseline == "mean":
        b = r.mean()
    elif baseline is None or baseline == "none":
        b = torch.zeros((), dtype=r.dtype, device=r.device)
    elif isinstance(baseline, int | float):
        b = torch.tensor(float(baseline), dtype=r.dtype, device=r.device)
    else:
        raise ValueError(f"baseline must be 'mean', 'none' or a number, not {baseline!r}")
    advantage, logq = torch.broadcast_tensors(r - b, logq)
    return -advantage * logq
