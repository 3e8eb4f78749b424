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

import itertools
import math
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


def _t(x: ArrayLike) -> torch.Tensor:
    """Convert to a float64 tensor; torch tensors keep their graph (``.to`` is differentiable)."""
    if isinstance(x, torch.Tensor):
        return x.to(DTYPE)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)


def _check_distribution(p: torch.Tensor, name: str) -> None:
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


def _check_unit_interval(a: torch.Tensor, name: str) -> None:
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
    p, q = _t(p), _t(q)
    _check_same_shape(p, q)
    if validate:
        _check_distribution(p, "p")
        _check_distribution(q, "q")
    return 0.5 * (p - q).abs().sum(-1)


def kl_divergence(p: ArrayLike, q: ArrayLike, validate: bool = True) -> torch.Tensor:
    """``KL(p || q) = sum_r p(r) log(p(r) / q(r))`` with ``0 log 0 = 0`` and ``+inf`` where p > 0 = q.

    NaN-free in forward and backward: terms with p = 0 are exactly 0 with zero gradient.
    """
    p, q = _t(p), _t(q)
    _check_same_shape(p, q)
    if validate:
        _check_distribution(p, "p")
        _check_distribution(q, "q")
    pos = p > 0
    # Substitute harmless values where p = 0 so that neither branch of torch.where produces NaN grads.
    p_safe = torch.where(pos, p, torch.ones_like(p))
    q_safe = torch.where(pos, q, torch.ones_like(q))
    terms = torch.where(pos, p_safe * (torch.log(p_safe) - torch.log(q_safe)), torch.zeros_like(p))
    return terms.sum(-1)


def expectation_gap(p: ArrayLike, q: ArrayLike, f: ArrayLike) -> torch.Tensor:
    """``E_p f - E_q f = sum_r (p(r) - q(r)) f(r)`` (f broadcast against p and q)."""
    p, q, f = _t(p), _t(q), _t(f)
    return ((p - q) * f).sum(-1)


def variational_tv(p: ArrayLike, q: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Variational form of TV: ``TV(p, q) = max_{f: outcomes -> [0, 1]} E_p f - E_q f``.

    The gap is linear in f, so the max over the cube [0, 1]^K sits at a vertex; the best vertex is
    ``f* = 1{p > q}`` (take every outcome where p has excess mass). Returns ``(value, f_star)`` with
    ``value = E_p f* - E_q f*`` which equals :func:`tv_distance`. Applying the same argument to 1 - f
    gives the two-sided ``|E_p f - E_q f| <= TV`` (Theorem 3.1).
    """
    p, q = _t(p), _t(q)
    _check_same_shape(p, q)
    _check_distribution(p, "p")
    _check_distribution(q, "q")
    f_star = (p > q).to(DTYPE)
    return expectation_gap(p, q, f_star), f_star


def pinsker_bound(kl: ArrayLike) -> torch.Tensor:
    """Pinsker: ``TV <= sqrt(KL / 2)``. Tight for small KL, vacuous (> 1) once KL > 2."""
    return torch.sqrt(_t(kl) / 2.0)


def bretagnolle_huber_bound(kl: ArrayLike) -> torch.Tensor:
    """Bretagnolle-Huber: ``TV <= sqrt(1 - exp(-KL))``; never exceeds 1, beats Pinsker for KL > ~1.6."""
    return torch.sqrt(-torch.expm1(-_t(kl)))


def tv_upper_bound_from_kl(kl: ArrayLike) -> torch.Tensor:
    """Best of the KL-based bounds: ``min(sqrt(KL/2), sqrt(1 - exp(-KL)), 1)``."""
    kl = _t(kl)
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
    p = _t(gp / gp.sum(1, keepdims=True))
    q = _t(gq / gq.sum(1, keepdims=True))
    f_unif = _t(rng.uniform(size=(n_trials, k)))
    f_subset = _t(rng.integers(0, 2, size=(n_trials, k)))

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
    p, a = _t(base_probs), _t(alpha)
    p, a = torch.broadcast_tensors(p, a)
    _check_distribution(p, "base_probs")
    _check_unit_interval(a, "alpha")
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
    d, f = _t(dist), _t(safe_mask)
    _check_unit_interval(f, "safe_mask")
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
    ly, lr, a = torch.broadcast_tensors(_t(log_q_y), _t(log_q_r), _t(alpha))
    _check_unit_interval(a, "alpha")
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
    qy, qr, a = torch.broadcast_tensors(_t(q_y), _t(q_r), _t(alpha))
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
    lq, p, a = _t(student_log_probs), _t(base_probs), _t(alpha)
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
    p = _t(base_probs)
    z = torch.zeros(p.shape[-1] + 1, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        expected_disp_loss(torch.log_softmax(z, -1), p, alpha, loss=loss).backward()
        opt.step()
    return torch.softmax(z, -1).detach().numpy()


# ----------------------------------------------------------------------------------------------------------
# sequence level
# ----------------------------------------------------------------------------------------------------------

CondTables = dict[tuple[int, ...], np.ndarray]


def random_conditional_tables(V: int, T: int, seed: int = 0, concentration: float = 1.0) -> CondTables:
    """A random autoregressive model: ``{prefix: p(. | prefix)}`` for every prefix of length 0 .. T-1.

    Conditionals are Dirichlet(concentration) draws, independent across prefixes.
    """
    rng = np.random.default_rng(seed)
    tables: CondTables = {}
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            g = rng.gamma(concentration, size=V) + 1e-300
            tables[prefix] = g / g.sum()
    return tables


def _prefix_probs(tables: CondTables, V: int, t: int) -> dict[tuple[int, ...], float]:
    """P(prefix) for every prefix of length t, by the chain rule."""
    out: dict[tuple[int, ...], float] = {}
    for prefix in itertools.product(range(V), repeat=t):
        prob = 1.0
        for s in range(t):
            prob *= float(tables[prefix[:s]][prefix[s]])
        out[prefix] = prob
    return out


def sequence_distribution(cond_tables: CondTables, V: int, T: int) -> torch.Tensor:
    """Exact joint distribution over all V**T sequences, as a tensor of shape (V,) * T."""
    probs = _prefix_probs(cond_tables, V, T)
    out = torch.zeros((V,) * T, dtype=DTYPE)
    for seq, prob in probs.items():
        out[seq] = prob
    return out


def sequence_tv_bound_check(p_tables: CondTables, q_tables: CondTables, V: int, T: int) -> dict[str, Any]:
    """Exact ``TV(P_seq, Q_seq)`` and the per-token bound ``sum_t E_{prefix ~ P} TV(p(.|prefix), q(.|prefix))``.

    Why it holds: telescoping over hybrids H_t (first t tokens from P, the rest from Q),
    ``TV(P, Q) <= sum_t TV(H_t, H_{t-1})`` and the t-th term equals ``E_{prefix ~ P} TV(p_t, q_t)`` (the
    shared continuation from Q cannot increase TV). Returns ``tv_seq``, ``bound`` and ``per_position``.
    """
    P = sequence_distribution(p_tables, V, T)
    Q = sequence_distribution(q_tables, V, T)
    tv_seq = float(tv_distance(P.reshape(-1), Q.reshape(-1)))
    per_position = []
    for t in range(T):
        w = _prefix_probs(p_tables, V, t)
        per_position.append(
            sum(w[pre] * float(tv_distance(p_tables[pre], q_tables[pre])) for pre in w if w[pre] > 0)
        )
    return {"tv_seq": tv_seq, "bound": float(sum(per_position)), "per_position": per_position}


def sequence_kl_chain_rule(p_tables: CondTables, q_tables: CondTables, V: int, T: int) -> dict[str, Any]:
    """Exact ``KL(P_seq || Q_seq)`` and the chain-rule sum ``sum_t E_{prefix ~ P} KL(p(.|prefix) || q(.|prefix))``.

    The two are equal (an identity, not a bound): log P/Q of a sequence is the sum of per-token log ratios.
    """
    P = sequence_distribution(p_tables, V, T)
    Q = sequence_distribution(q_tables, V, T)
    kl_seq = float(kl_divergence(P.reshape(-1), Q.reshape(-1)))
    per_position = []
    for t in range(T):
        w = _prefix_probs(p_tables, V, t)
        per_position.append(
            sum(w[pre] * float(kl_divergence(p_tables[pre], q_tables[pre])) for pre in w if w[pre] > 0)
        )
    return {"kl_seq": kl_seq, "chain_sum": float(sum(per_position)), "per_position": per_position}


def random_sequence_checks(n_pairs: int = 200, V: int = 3, T: int = 4, seed: int = 0) -> dict[str, Any]:
    """The per-token TV bound and the KL chain rule on `n_pairs` random autoregressive pairs (P, Q).

    P has Dirichlet(0.5) conditionals; Q mixes them with an independent model R, ``q = (1 - e) p + e r`` with
    e ~ U(0, 1) per pair, so pairs range from identical to far apart. Returns the per-pair arrays ``tv_seq``,
    ``tv_bound``, ``kl_seq``, ``kl_sum`` and the maxima ``max_sequence_bound_violation`` (max TV_seq − bound,
    mathematically <= 0) and ``kl_chain_rule_error`` (max |KL_seq − chain-rule sum|, mathematically 0).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        p_tab = random_conditional_tables(V, T, seed=seed + i, concentration=0.5)
        r_tab = random_conditional_tables(V, T, seed=seed + 100_000 + i, concentration=0.5)
        eps = rng.uniform()
        q_tab = {prefix: (1 - eps) * p_tab[prefix] + eps * r_tab[prefix] for prefix in p_tab}
        tv_res = sequence_tv_bound_check(p_tab, q_tab, V, T)
        kl_res = sequence_kl_chain_rule(p_tab, q_tab, V, T)
        rows.append((tv_res["tv_seq"], tv_res["bound"], kl_res["kl_seq"], kl_res["chain_sum"]))
    tv_seq, tv_bound, kl_seq, kl_sum = np.array(rows).T
    return {
        "tv_seq": tv_seq,
        "tv_bound": tv_bound,
        "kl_seq": kl_seq,
        "kl_sum": kl_sum,
        "max_sequence_bound_violation": float((tv_seq - tv_bound).max()),
        "kl_chain_rule_error": float(np.abs(kl_seq - kl_sum).max()),
    }


# ----------------------------------------------------------------------------------------------------------
# toy experiment: why KL may over-refuse
# ----------------------------------------------------------------------------------------------------------


def toy_overrefusal_experiment(
    n_prompts: int = 20,
    n_responses: int = 5,
    alpha_unsafe: float = 0.1,
    alpha_safe: float = 0.95,
    harmful_fraction: float = 0.5,
    feature_dim: int = 3,
    feature_noise: float = 1.0,
    base_refusal: float = 0.01,
    per_prompt_logits: bool = False,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Distil a toy safe system into a capacity-limited student with the TV and the KL surrogate.

    Teacher. Prompt i has base probabilities p_base(.|x_i) over K responses (Dirichlet(1)). On harmful
    prompts every response but one gets guard probability ``alpha_unsafe`` (one safe completion keeps
    ``alpha_safe``); on benign prompts all responses get ``alpha_safe``. Each alpha is jittered a little
    (uniform +-0.04, clipped to [0.001, 0.999]) so guard scores are soft and not all equal. The teacher is
    ``safe_system_distribution`` with the refusal appended at index K.

    Student. The frozen base model puts ``base_refusal`` on the refusal and the rest on p_base. The trainable
    part is *shared across prompts*, like a soft prompt: the refusal logit is shifted by ``u + w . phi_i`` and
    response k's logit by ``v . psi_ik``, where phi_i = (harmful_i + noise, noise...) and psi_ik =
    ((1 - alpha_ik) + noise, noise...) are noisy ``feature_dim``-dimensional features (``feature_noise`` is
    the noise std): the student only sees the prompt's harmfulness through imperfect features, and the
    refusal string, being the same for every prompt, gets one shared parameter. ``per_prompt_logits=True``
    adds free per-prompt logits (full capacity) for comparison.

    Training: Adam on the exact expected surrogate ``mean_i E_{y ~ p_base} L(y)`` (no sampling), once per loss
    from the same initialisation. Nothing is tuned towards a particular outcome: whatever the curves show is
    returned.

    Returns ``{"tv": hist, "kl": hist, "teacher": {...}, "config": {...}}`` where each ``hist`` holds numpy
    arrays of length steps + 1 (before training and after each step): ``loss``, ``refusal_benign``,
    ``refusal_harmful`` (mean student refusal probability on each group), ``tv`` (mean exact TV(teacher_i,
    q_i)), and the teacher dict holds the matching teacher refusal rates.
    """
    config = dict(
        n_prompts=n_prompts,
        n_responses=n_responses,
        alpha_unsafe=alpha_unsafe,
        alpha_safe=alpha_safe,
        harmful_fraction=harmful_fraction,
        feature_dim=feature_dim,
        feature_noise=feature_noise,
        base_refusal=base_refusal,
        per_prompt_logits=per_prompt_logits,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    n, K, d = n_prompts, n_responses, feature_dim
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=DTYPE)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    # --- teacher -------------------------------------------------------------------------------------------
    n_harm = int(round(harmful_fraction * n))
    harmful = torch.zeros(n, dtype=torch.bool)
    harmful[torch.randperm(n, generator=gen)[:n_harm]] = True
    base = -torch.log(rand(n, K))  # Exp(1) draws -> Dirichlet(1) after normalising
    base = base / base.sum(-1, keepdim=True)
    alpha = torch.full((n, K), alpha_safe, dtype=DTYPE)
    safe_slot = torch.randint(0, K, (n,), generator=gen)
    unsafe = harmful[:, None] & (torch.arange(K)[None, :] != safe_slot[:, None])
    alpha = torch.where(unsafe, torch.full_like(alpha, alpha_unsafe), alpha)
    alpha = (alpha + 0.08 * (rand(n, K) - 0.5)).clamp(0.001, 0.999)
    teacher = safe_system_distribution(base, alpha)  # (n, K+1)

    # --- student features (fixed) --------------------------------------------------------------------------
    phi = feature_noise * randn(n, d)
    phi[:, 0] += harmful.to(DTYPE)
    psi = feature_noise * randn(n, K, d)
    psi[..., 0] += 1.0 - alpha
    base_logits = torch.cat(
        [torch.log(base * (1 - base_refusal)), torch.full((n, 1), math.log(base_refusal), dtype=DTYPE)], -1
    )

    def student_log_probs(params: dict[str, torch.Tensor]) -> torch.Tensor:
        resp = psi @ params["v"]  # (n, K)
        ref = params["u"] + phi @ params["w"]  # (n,)
        logits = base_logits + torch.cat([resp, ref[:, None]], -1)
        if per_prompt_logits:
            logits = logits + params["z"]
        return torch.log_softmax(logits, -1)

    def init_params() -> dict[str, torch.Tensor]:
        params = {
            "u": torch.zeros((), dtype=DTYPE),
            "w": torch.zeros(d, dtype=DTYPE),
            "v": torch.zeros(d, dtype=DTYPE),
        }
        if per_prompt_logits:
            params["z"] = torch.zeros(n, K + 1, dtype=DTYPE)
        return {k: p.requires_grad_(True) for k, p in params.items()}

    def record(hist: dict[str, list[float]], lq: torch.Tensor, loss_value: float) -> None:
        q = lq.exp().detach()
        hist["loss"].append(loss_value)
        hist["refusal_benign"].append(float(q[~harmful, K].mean()) if (~harmful).any() else float("nan"))
        hist["refusal_harmful"].append(float(q[harmful, K].mean()) if harmful.any() else float("nan"))
        hist["tv"].append(float(tv_distance(teacher, q, validate=False).mean()))

    out: dict[str, Any] = {}
    for loss_name in ("tv", "kl"):
        params = init_params()
        opt = torch.optim.Adam(params.values(), lr=lr)
        hist: dict[str, list[float]] = {k: [] for k in ("loss", "refusal_benign", "refusal_harmful", "tv")}
        for step in range(steps + 1):
            lq = student_log_probs(params)
            loss = expected_disp_loss(lq, base, alpha, loss=loss_name).mean()
            record(hist, lq, float(loss.detach()))
            if step == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[loss_name] = {k: np.asarray(v) for k, v in hist.items()}

    out["teacher"] = {
        "refusal_benign": float(teacher[~harmful, K].mean()) if (~harmful).any() else float("nan"),
        "refusal_harmful": float(teacher[harmful, K].mean()) if harmful.any() else float("nan"),
        "harmful": harmful.numpy(),
        "distribution": teacher.numpy(),
    }
    out["config"] = config
    return out
