"""The DiSP surrogates on exact (tabular) distributions: the dual system's output distribution, Eq. 4's
clipped NLL and the KL-DiSP weighted NLL, their gradients, expected losses and their minimisers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from dispsafe_nb.theory.divergences import DTYPE, as_float64, check_distribution, check_unit_interval

if TYPE_CHECKING:
    from dispsafe_nb.theory.divergences import ArrayLike


# ----------------------------------------------------------------------------------------------------------
# the safe system (teacher)
# ----------------------------------------------------------------------------------------------------------


def safe_system_distribution(
    base_probs: ArrayLike, alpha: ArrayLike, refusal_index: int | None = None
) -> torch.Tensor:
    """Output distribution of the dual system (LLM + guard + fixed refusal).

    ``p(r|x) = sum_y p(y|x) [alpha(y) 1(r = y) + (1 - alpha(y)) 1(r = y_r)]``.

    ``base_probs`` (..., K) is p(y|x) over K responses, ``alpha`` (..., K) the guard's probability that each
    response is safe. With ``refusal_index=None`` the refusal is a new outcome appended at index K and the
    result has K + 1 outcomes; with ``refusal_index=j`` the refusal *is* response j (the base model could
    itself produce the refusal string) and the result has K outcomes.
    """
    p, a = as_float64(base_probs), as_float64(alpha)
    p, a = torch.broadcast_tensors(p, a)
    check_distribution(p, "base_probs")
    check_unit_interval(a, "alpha")
    kept = p * a
    refused = (p * (1.0 - a)).sum(-1, keepdim=True)
    if refusal_index is None:
        return torch.cat([kept, refused], dim=-1)
    k = p.shape[-1]
    if not -k <= refusal_index < k:
        raise ValueError(f"refusal_index {refusal_index} out of range for {k} responses")
    onehot = torch.zeros(k, dtype=DTYPE)
    onehot[refusal_index] = 1.0
    return kept + refused * onehot


def safety_rate(dist: ArrayLike, safe_mask: ArrayLike) -> torch.Tensor:
    """``E_dist[f]`` for a safety score f (bool mask or values in [0, 1]) over the outcomes.

    Because f is [0, 1]-valued, Theorem 3.1 gives ``|safety_rate(p) - safety_rate(q)| <= TV(p, q)``.
    """
    d, f = as_float64(dist), as_float64(safe_mask)
    check_unit_interval(f, "safe_mask")
    return (d * f).sum(-1)


# ----------------------------------------------------------------------------------------------------------
# two-point distillation surrogates
# ----------------------------------------------------------------------------------------------------------


def weighted_clipped_nll(log_q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``-w * min(log q - log w, 0) = w * [log(w / q)]_+`` with a zero-weight term exactly 0 (value and grad).

    ``log w`` is only evaluated where w > 0; elsewhere harmless stand-ins keep every backward branch finite.
    The clip uses a strict ``<`` so that the gradient is exactly 0 from ``q = w`` on.
    """
    pos = w > 0
    w_safe = torch.where(pos, w, torch.ones_like(w))
    log_q_safe = torch.where(pos, log_q, torch.zeros_like(log_q))
    diff = log_q_safe - torch.log(w_safe)
    clipped = torch.where(diff < 0, diff, torch.zeros_like(diff))
    return torch.where(pos, -w_safe * clipped, torch.zeros_like(clipped))


def weighted_nll(log_q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``-w * log q`` with a zero-weight term exactly 0 (even when log q = -inf)."""
    pos = w > 0
    log_q_safe = torch.where(pos, log_q, torch.zeros_like(log_q))
    return torch.where(pos, -w * log_q_safe, torch.zeros_like(log_q_safe))


def _broadcast3(log_q_y: ArrayLike, log_q_r: ArrayLike, alpha: ArrayLike) -> tuple[torch.Tensor, ...]:
    ly, lr, a = torch.broadcast_tensors(as_float64(log_q_y), as_float64(log_q_r), as_float64(alpha))
    check_unit_interval(a, "alpha")
    return ly, lr, a


def tv_disp_loss(log_q_y: ArrayLike, log_q_r: ArrayLike, alpha: ArrayLike) -> torch.Tensor:
    """TV-DiSP surrogate (paper Eq. 4), elementwise:

    ``L_TV = -a * min(log q_y - log a, 0) - (1 - a) * min(log q_r - log(1 - a), 0)``
    ``     = a * [log(a / q_y)]_+ + (1 - a) * [log((1 - a) / q_r)]_+``

    where ``q_y`` / ``q_r`` are the student's probabilities of the sampled response and of the refusal and
    ``a = alpha(x, y)`` the guard's soft safety probability. a in {0, 1} is safe: a zero-weight term is
    exactly 0 with zero gradient. The gradient w.r.t. ``log q_y`` is ``-a`` while ``q_y < a`` and exactly 0
    once ``q_y >= a`` (the clip); likewise ``-(1 - a)`` / 0 for ``log q_r`` around ``q_r = 1 - a``.

    How it relates to TV (each step checked in the tests). Given a sampled y != y_r, the teacher's
    conditional output is the two-point distribution ``a_y = a delta_y + (1 - a) delta_{y_r}``. Per atom with
    teacher mass w and student mass q, ``log t >= 1 - 1/t`` with ``t = w/q`` gives
    ``w [log(w/q)]_+ >= [w - q]_+``. Summing over the two atoms, and since ``TV(a_y, q) = sum_r (a_y(r) - q(r))_+``
    has positive parts only on the support of a_y:

        L_TV(y) >= TV(a_y, q),   and also   L_TV(y) >= KL(a_y || q) (drop the negative parts of the KL sum).

    L_TV(y) = 0 iff q_y >= a and q_r >= 1 - a, i.e. iff q = a_y. The teacher p(.|x) = E_y a_y is a mixture,
    and TV is convex, so ``E_{y ~ p_base} L_TV(y) >= E_y TV(a_y, q) >= TV(p(.|x), q(.|x))``: the expected
    loss upper-bounds TV, and through Theorem 3.1 the gap of every [0, 1]-valued score.

    Caveats: (i) the bound is one-sided and not tight: the minimiser of ``E_y L_TV`` is in general *not*
    the teacher p (clipped atoms drop out, so it is a weighted NLL on the still-unsatisfied atoms; see
    :func:`expected_disp_loss`), whereas E_y L_KL is minimised exactly at q = p. (ii) If the sampled y *is*
    the refusal string, the two atoms coincide, a_y = delta_{y_r}, and the per-sample bound can fail
    (a = 0.5, q_r = 0.5 gives L_TV = 0 but TV = 0.5); the correct per-sample loss is then ``-log q_r``.
    (iii) With hard labels a in {0, 1}, L_TV equals L_KL exactly (log a = 0 and log q <= 0): the clip only
    matters for soft guard probabilities.
    """
    ly, lr, a = _broadcast3(log_q_y, log_q_r, alpha)
    return weighted_clipped_nll(ly, a) + weighted_clipped_nll(lr, 1.0 - a)


def kl_disp_loss(log_q_y: ArrayLike, log_q_r: ArrayLike, alpha: ArrayLike) -> torch.Tensor:
    """KL-DiSP surrogate: the alpha-weighted NLL ``L_KL = -a log q_y - (1 - a) log q_r``.

    For the two-point conditional teacher a_y, ``L_KL(y) = KL(a_y || q) + H(a_y)`` (H = binary entropy of a,
    a constant), and ``E_y L_KL`` is minimised over the simplex exactly at q = p(.|x). Zero-weight terms are 0.
    """
    ly, lr, a = _broadcast3(log_q_y, log_q_r, alpha)
    return weighted_nll(ly, a) + weighted_nll(lr, 1.0 - a)


_LOSSES = {"tv": tv_disp_loss, "kl": kl_disp_loss}


def _loss_fn(loss: str):
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")
    return _LOSSES[loss]


def surrogate_grads(
    log_q_y: ArrayLike, log_q_r: ArrayLike, alpha: ArrayLike, loss: str = "tv"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise gradients ``(dL/dlog q_y, dL/dlog q_r)`` of the "tv" or "kl" surrogate, by autograd.

    Inputs broadcast; handy for plotting the clip against a grid of q_y values.
    """
    ly, lr, a = _broadcast3(log_q_y, log_q_r, alpha)
    ly = ly.detach().clone().requires_grad_(True)
    lr = lr.detach().clone().requires_grad_(True)
    value = _loss_fn(loss)(ly, lr, a.detach()).sum()
    gy, gr = torch.autograd.grad(value, (ly, lr))
    return gy, gr


def refusal_logit_grad(q_y: ArrayLike, q_r: ArrayLike, alpha: ArrayLike, loss: str = "tv") -> torch.Tensor:
    """Closed-form ``dL/dz_r`` (refusal logit) of one sample's loss for a softmax student with logits z, y != y_r.

    With ``log q = z - logsumexp(z)``: ``d log q_y / dz_r = -q_r`` and ``d log q_r / dz_r = 1 - q_r``, so

    * KL:  ``dL_KL/dz_r = a q_r - (1 - a)(1 - q_r) = q_r - (1 - a)``  (stationary at q_r = 1 - a);
    * TV:  the same ``q_r - (1 - a)`` while ``q_r < 1 - a`` and ``q_y < a``, and ``a q_r`` once ``q_r >= 1 - a``.

    In general each term contributes only while it is below its clip:
    ``dL_TV/dz_r = 1{q_y < a} a q_r - 1{q_r < 1 - a} (1 - a)(1 - q_r)``. So on the refusal logit the two
    losses agree below the teacher's refusal mass and differ only above it, where TV pushes the refusal down
    harder, by ``(1 - a)(1 - q_r)``. For a real LLM ``q_y`` of a whole sampled response is tiny, so the
    response clip essentially never engages and this "above the mass" difference is all that separates them.
    """
    qy, qr, a = torch.broadcast_tensors(as_float64(q_y), as_float64(q_r), as_float64(alpha))
    _loss_fn(loss)
    y_on = torch.ones_like(qr) if loss == "kl" else (qy < a).to(DTYPE)
    r_on = torch.ones_like(qr) if loss == "kl" else (qr < 1.0 - a).to(DTYPE)
    return y_on * a * qr - r_on * (1.0 - a) * (1.0 - qr)


def expected_disp_loss(
    student_log_probs: ArrayLike, base_probs: ArrayLike, alpha: ArrayLike, loss: str = "tv"
) -> torch.Tensor:
    """Exact ``E_{y ~ p_base}[L(y)]`` for a student over K + 1 outcomes (refusal appended at index K).

    ``student_log_probs`` (..., K+1), ``base_probs`` and ``alpha`` (..., K). Responses with zero base
    probability contribute exactly 0 (even if the student gives them zero mass).
    """
    lq, p, a = as_float64(student_log_probs), as_float64(base_probs), as_float64(alpha)
    k = p.shape[-1]
    if lq.shape[-1] != k + 1:
        raise ValueError(f"student_log_probs needs K + 1 = {k + 1} outcomes, got {lq.shape[-1]}")
    per = _loss_fn(loss)(lq[..., :k], lq[..., k:], a)
    per = torch.where(p > 0, per, torch.zeros_like(per))
    return (p * per).sum(-1)


def minimise_expected_loss(
    base_probs: ArrayLike, alpha: ArrayLike, loss: str = "tv", steps: int = 500, lr: float = 0.05
) -> np.ndarray:
    """The student q over K + 1 outcomes (refusal last) that minimises :func:`expected_disp_loss`, found by Adam on
    free logits from the uniform start: a fully flexible student, the population-level optimum of each loss."""
    _loss_fn(loss)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    p = as_float64(base_probs)
    z = torch.zeros(p.shape[-1] + 1, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        expected_disp_loss(torch.log_softmax(z, -1), p, alpha, loss=loss).backward()
        opt.step()
    return torch.softmax(z, -1).detach().numpy()
