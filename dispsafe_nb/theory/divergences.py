"""Small, exact, tested pieces of theory behind TV-DiSP (notebook 01).

Everything here works on *categorical* distributions over a small, enumerable outcome space, so every
quantity can be computed exactly (no sampling) and checked against brute force.

Conventions
-----------
* Distributions live on the last axis; leading axes are batch axes.
* Inputs may be lists, numpy arrays or torch tensors; they are converted to ``torch.float64``
  (torch tensors keep their autograd graph). Functions that return distributions or losses return tensors;
  the ``*_check`` / ``random_*`` / ``toy_*`` helpers return plain floats and numpy arrays for plotting.
* The safe system's refusal ``y_r`` is, by default, an extra outcome appended *after* the K responses
  (index K). ``refusal_index=j`` instead merges it into response j.

The results verified here (see ``tests/test_theory.py``):

* Theorem 3.1 (variational form of TV): for every f with values in [0, 1],
  ``|E_p f - E_q f| <= TV(p, q) = 0.5 * sum |p - q| = sum (p - q)_+``, with equality at ``f = 1{p > q}``.
* Pinsker ``TV <= sqrt(KL / 2)`` and Bretagnolle-Huber ``TV <= sqrt(1 - exp(-KL))``.
* Sequence level: ``TV(P_seq, Q_seq) <= sum_t E_{prefix ~ P} TV(p(.|prefix), q(.|prefix))`` and the exact
  KL chain rule ``KL(P_seq || Q_seq) = sum_t E_{prefix ~ P} KL(p(.|prefix) || q(.|prefix))``.
* TV-DiSP surrogate: for a sampled response y != y_r with guard probability a, the conditional teacher is the
  two-point distribution ``a_y = a * delta_y + (1 - a) * delta_{y_r}`` and, atom by atom,
  ``w * [log(w / q)]_+ >= [w - q]_+`` (because ``log t >= 1 - 1/t``), hence
  ``L_TV(y) >= TV(a_y, q)`` and also ``L_TV(y) >= KL(a_y || q)``; by convexity of TV in its first argument,
  ``E_y L_TV(y) >= E_y TV(a_y, q) >= TV(p(.|x), q(.|x))``. See :func:`tv_disp_loss` for the caveats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any] | float
DTYPE = torch.float64

# Tolerance on "sums to one" used by the validators.
SUM_TOL = 1e-6


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def as_float64(x: ArrayLike) -> torch.Tensor:
    """Convert to a float64 tensor; torch tensors keep their graph (``.to`` is differentiable)."""
    if isinstance(x, torch.Tensor):
        return x.to(DTYPE)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)


def check_distribution(p: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every row (last axis) is a probability vector."""
    with torch.no_grad():
        if p.ndim == 0:
            raise ValueError(f"{name} must have at least one axis (the outcomes), got a scalar")
        if not torch.isfinite(p).all():
            raise ValueError(f"{name} contains non-finite values")
        if (p < 0).any():
            raise ValueError(f"{name} has negative entries (min {p.min().item():.3g})")
        err = (p.sum(-1) - 1.0).abs().max().item()
        if err > SUM_TOL:
            raise ValueError(f"{name} does not sum to 1 along the last axis (max |sum - 1| = {err:.3g})")


def _check_same_shape(p: torch.Tensor, q: torch.Tensor) -> None:
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")


def check_unit_interval(a: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise ValueError(f"{name} must lie in [0, 1]")


# ----------------------------------------------------------------------------------------------------------
# divergences and Theorem 3.1
# ----------------------------------------------------------------------------------------------------------


def tv_distance(p: ArrayLike, q: ArrayLike, validate: bool = True) -> torch.Tensor:
    """Total variation distance ``TV(p, q) = 0.5 * sum_r |p(r) - q(r)|`` over the last axis.

    Equivalently ``sum_r (p(r) - q(r))_+ = max_A p(A) - q(A)``. Batched over leading axes.
    """
    p, q = as_float64(p), as_float64(q)
    _check_same_shape(p, q)
    if validate:
        check_distribution(p, "p")
        check_distribution(q, "q")
    return 0.5 * (p - q).abs().sum(-1)


def kl_divergence(p: ArrayLike, q: ArrayLike, validate: bool = True) -> torch.Tensor:
    """``KL(p || q) = sum_r p(r) log(p(r) / q(r))`` with ``0 log 0 = 0`` and ``+inf`` where p > 0 = q.

    NaN-free in forward and backward: terms with p = 0 are exactly 0 with zero gradient.
    """
    p, q = as_float64(p), as_float64(q)
    _check_same_shape(p, q)
    if validate:
        check_distribution(p, "p")
        check_distribution(q, "q")
    pos = p > 0
    # Substitute harmless values where p = 0 so that neither branch of torch.where produces NaN grads.
    p_safe = torch.where(pos, p, torch.ones_like(p))
    q_safe = torch.where(pos, q, torch.ones_like(q))
    terms = torch.where(pos, p_safe * (torch.log(p_safe) - torch.log(q_safe)), torch.zeros_like(p))
    return terms.sum(-1)


def expectation_gap(p: ArrayLike, q: ArrayLike, f: ArrayLike) -> torch.Tensor:
    """``E_p f - E_q f = sum_r (p(r) - q(r)) f(r)`` (f broadcast against p and q)."""
    p, q, f = as_float64(p), as_float64(q), as_float64(f)
    return ((p - q) * f).sum(-1)


def variational_tv(p: ArrayLike, q: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Variational form of TV: ``TV(p, q) = max_{f: outcomes -> [0, 1]} E_p f - E_q f``.

    The gap is linear in f, so the max over the cube [0, 1]^K sits at a vertex; the best vertex is
    ``f* = 1{p > q}`` (take every outcome where p has excess mass). Returns ``(value, f_star)`` with
    ``value = E_p f* - E_q f*`` which equals :func:`tv_distance`. Applying the same argument to 1 - f
    gives the two-sided ``|E_p f - E_q f| <= TV`` (Theorem 3.1).
    """
    p, q = as_float64(p), as_float64(q)
    _check_same_shape(p, q)
    check_distribution(p, "p")
    check_distribution(q, "q")
    f_star = (p > q).to(DTYPE)
    return expectation_gap(p, q, f_star), f_star


def pinsker_bound(kl: ArrayLike) -> torch.Tensor:
    """Pinsker: ``TV <= sqrt(KL / 2)``. Tight for small KL, vacuous (> 1) once KL > 2."""
    return torch.sqrt(as_float64(kl) / 2.0)


def bretagnolle_huber_bound(kl: ArrayLike) -> torch.Tensor:
    """Bretagnolle-Huber: ``TV <= sqrt(1 - exp(-KL))``; never exceeds 1, beats Pinsker for KL > ~1.6."""
    return torch.sqrt(-torch.expm1(-as_float64(kl)))


def tv_upper_bound_from_kl(kl: ArrayLike) -> torch.Tensor:
    """Best of the KL-based bounds: ``min(sqrt(KL/2), sqrt(1 - exp(-KL)), 1)``."""
    kl = as_float64(kl)
    out = torch.minimum(pinsker_bound(kl), bretagnolle_huber_bound(kl))
    return torch.clamp(out, max=1.0)


def random_bound_checks(n_trials: int = 5000, k: int = 6, seed: int = 0) -> dict[str, Any]:
    """Check Theorem 3.1, Pinsker and Bretagnolle-Huber on random triples (p, q, f).

    p and q are Dirichlet draws over k outcomes with a per-trial concentration log-uniform in [0.1, 5]
    (small concentrations give sparse, far-apart pairs and large TV). For each pair the test functions are
    one uniform f in [0, 1]^k, one random subset indicator, and the optimal indicator f* = 1{p > q}.

    Returns max violations (all must be <= ~1e-12; mathematically <= 0):

    * ``max_variational_violation`` = max over (p, q, f) of ``|E_p f - E_q f| - TV``;
    * ``max_fstar_equality_error`` = max ``|E_p f* - E_q f* - TV|`` (should be ~0: the sup is attained);
    * ``max_pinsker_violation`` = max ``TV - sqrt(KL / 2)``;
    * ``max_bh_violation`` = max ``TV - sqrt(1 - exp(-KL))``;

    plus ``tv`` and ``kl`` arrays (numpy, length n_trials; kl may be +inf) for plotting the Pinsker gap.
    """
    rng = np.random.default_rng(seed)
    conc = np.exp(rng.uniform(np.log(0.1), np.log(5.0), size=(n_trials, 1)))
    # Tiny floor so that no row is all-zero after gamma underflow; renormalised below.
    gp = rng.gamma(conc, size=(n_trials, k)) + 1e-300
    gq = rng.gamma(conc, size=(n_trials, k)) + 1e-300
    p = as_float64(gp / gp.sum(1, keepdims=True))
    q = as_float64(gq / gq.sum(1, keepdims=True))
    f_unif = as_float64(rng.uniform(size=(n_trials, k)))
    f_subset = as_float64(rng.integers(0, 2, size=(n_trials, k)))

    tv = tv_distance(p, q)
    kl = kl_divergence(p, q)
    tv_star, f_star = variational_tv(p, q)
    gaps = torch.stack([expectation_gap(p, q, f) for f in (f_unif, f_subset, f_star)])
    return {
        "n_trials": n_trials,
        "k": k,
        "max_variational_violation": float((gaps.abs() - tv).max()),
        "max_fstar_equality_error": float((tv_star - tv).abs().max()),
        "max_pinsker_violation": float((tv - pinsker_bound(kl)).max()),
        "max_bh_violation": float((tv - bretagnolle_huber_bound(kl)).max()),
        "tv": tv.numpy(),
        "kl": kl.numpy(),
    }
