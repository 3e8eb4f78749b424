"""Eq. 4 at sequence level: the TV-DiSP clip engages exactly at q(y_r) = 1 − α (and q(y) = α), per-term weights
scale the push without moving that point, KL-DiSP never stops pushing, and the per-token-mean ablation moves the
point to (1 − α)^T. Brute force on two-point teachers; no model is loaded.

(tests/test_objectives.py and tests/test_theory.py check the loss values, the gradient on a coarse grid and the
bounds; this file pins the threshold to the last float, the weights, the ablation and gradient descent.)
"""

from __future__ import annotations

import math

import pytest
import torch

from dispsafe_nb.training.batch_loss import BatchLoss
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.objectives import kl_disp_loss, tv_disp_loss

F64 = torch.float64
ALPHA = 0.05  # a harmful prompt: the guard finds the sampled answer unsafe
T_REFUSAL = 13  # tokens of a short refusal


def _grads(loss_fn, log_q_y, log_q_r, alpha, **weights):
    """d loss / d log q(y) and d loss / d log q(y_r), with the sequence log-probs as leaf tensors."""
    ly = torch.as_tensor(log_q_y, dtype=F64).clone().requires_grad_(True)
    lr = torch.as_tensor(log_q_r, dtype=F64).clone().requires_grad_(True)
    loss = loss_fn(ly, lr, torch.as_tensor(alpha, dtype=F64), **weights)
    gy, gr = torch.autograd.grad(loss.sum(), (ly, lr))
    return gy, gr


def _thresholds(alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log α and log(1 − α) computed as the loss computes them (float64 tensors)."""
    a = torch.tensor(alpha, dtype=F64)
    return torch.log(a), torch.log(1 - a)


def _around(threshold: torch.Tensor) -> torch.Tensor:
    """[just below (one ulp), at, just above (one ulp), well above] a threshold."""
    below = torch.nextafter(threshold, torch.tensor(-math.inf, dtype=F64))
    above = torch.nextafter(threshold, torch.tensor(math.inf, dtype=F64))
    return torch.stack([below, threshold, above, threshold + 0.01])


# ---------------------------------------------------------------------------------------------------------
# where the clip engages, to the last float
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [ALPHA, 0.3, 0.5, 0.9])
def test_refusal_gradient_is_minus_one_minus_alpha_below_log_one_minus_alpha_and_zero_from_it_on(alpha):
    _, log_1ma = _thresholds(alpha)
    log_q_r = _around(log_1ma)
    log_q_y = torch.full_like(log_q_r, math.log(alpha) + 1.0)  # y term clipped: only the refusal term acts
    gy, gr = _grads(tv_disp_loss, log_q_y, log_q_r, alpha)
    assert torch.equal(gr, torch.tensor([-(1 - alpha), 0.0, 0.0, 0.0], dtype=F64))
    assert torch.equal(gy, torch.zeros_like(gy))
    assert float(log_q_r[1].exp()) == pytest.approx(1 - alpha, rel=1e-15)  # i.e. at q(y_r) = 1 − α


@pytest.mark.parametrize("alpha", [ALPHA, 0.3, 0.5, 0.9])
def test_response_gradient_is_minus_alpha_below_log_alpha_and_zero_from_it_on(alpha):
    log_a, log_1ma = _thresholds(alpha)
    log_q_y = _around(log_a)
    log_q_r = torch.full_like(log_q_y, float(log_1ma) + 0.01)  # refusal term clipped
    gy, gr = _grads(tv_disp_loss, log_q_y, log_q_r, alpha)
    assert torch.equal(gy, torch.tensor([-alpha, 0.0, 0.0, 0.0], dtype=F64))
    assert torch.equal(gr, torch.zeros_like(gr))


def test_the_two_clips_are_independent():
    """Each term switches off on its own threshold, whatever the other term does."""
    log_a, log_1ma = _thresholds(ALPHA)
    y_grid, r_grid = _around(log_a), _around(log_1ma)
    ly, lr = torch.meshgrid(y_grid, r_grid, indexing="ij")
    gy, gr = _grads(tv_disp_loss, ly, lr, ALPHA)
    on = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    assert torch.equal(gy, (-ALPHA * on)[:, None].expand(4, 4))
    assert torch.equal(gr, (-(1 - ALPHA) * on)[None, :].expand(4, 4))


@pytest.mark.parametrize("weight", [1.0 / T_REFUSAL, 0.5, 1.0, 5.0])
def test_term_weights_scale_the_gradient_but_do_not_move_the_clip(weight):
    log_a, log_1ma = _thresholds(ALPHA)
    on = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    # refusal term (y term clipped)
    log_q_r = _around(log_1ma)
    _, gr = _grads(tv_disp_loss, torch.full_like(log_q_r, 0.0), log_q_r, ALPHA, weight_r=weight)
    torch.testing.assert_close(gr, -(1 - ALPHA) * weight * on, rtol=1e-15, atol=0.0)
    assert (gr[1:] == 0).all()
    # response term (refusal term clipped); a weight on the other term changes nothing here
    log_q_y = _around(log_a)
    gy, _ = _grads(tv_disp_loss, log_q_y, torch.full_like(log_q_y, 0.0), ALPHA, weight_y=weight, weight_r=7.0)
    torch.testing.assert_close(gy, -ALPHA * weight * on, rtol=1e-15, atol=0.0)
    assert (gy[1:] == 0).all()


@pytest.mark.parametrize("weight", [1.0 / T_REFUSAL, 1.0, 5.0])
def test_kl_disp_gradient_never_vanishes(weight):
    log_a, log_1ma = _thresholds(ALPHA)
    log_q_y = torch.cat([_around(log_a), torch.tensor([-20.0, -1e-6], dtype=F64)])
    log_q_r = torch.cat([_around(log_1ma), torch.tensor([-20.0, -1e-6], dtype=F64)])
    gy, gr = _grads(kl_disp_loss, log_q_y, log_q_r, ALPHA, weight_y=weight, weight_r=weight)
    torch.testing.assert_close(gy, torch.full_like(gy, -ALPHA * weight), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(gr, torch.full_like(gr, -(1 - ALPHA) * weight), rtol=1e-15, atol=0.0)


def test_python_float_alpha_and_weights_clip_exactly_at_their_own_value():
    """α and the weights given as Python floats are used at the log-probs' precision: with float64 log-probs the
    clip is at log(0.05), not at the log of 0.05 rounded to float32 (which used to leave a -α gradient there)."""
    log_q_y = torch.tensor([math.log(ALPHA), math.log(ALPHA) - 1e-12], dtype=F64, requires_grad=True)
    log_q_r = torch.tensor([math.log(1 - ALPHA), math.log(1 - ALPHA) - 1e-12], dtype=F64, requires_grad=True)
    loss = tv_disp_loss(log_q_y, log_q_r, ALPHA, weight_y=1.0 / 3, weight_r=1.0 / T_REFUSAL)
    gy, gr = torch.autograd.grad(loss.sum(), (log_q_y, log_q_r))
    assert gy[0] == 0 and gr[0] == 0
    torch.testing.assert_close(gy[1], torch.tensor(-ALPHA / 3, dtype=F64), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(gr[1], torch.tensor(-(1 - ALPHA) / T_REFUSAL, dtype=F64), rtol=1e-15, atol=0.0)
    # float32 log-probs get float32 constants, as before
    out = tv_disp_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), ALPHA, weight_r=0.5)
    assert out.dtype == torch.float32


def test_batch_loss_clipped_reports_exactly_the_terms_whose_gradient_is_zero():
    gen = torch.Generator().manual_seed(0)
    n = 400
    alpha = 0.01 + 0.98 * torch.rand(n, generator=gen, dtype=F64)
    log_q_y = torch.log(torch.rand(n, generator=gen, dtype=F64))
    log_q_r = torch.log(torch.rand(n, generator=gen, dtype=F64))
    log_q_y[:5], log_q_r[5:10] = torch.log(alpha[:5]), torch.log(1 - alpha[5:10])  # exactly at the clip
    gy, gr = _grads(tv_disp_loss, log_q_y, log_q_r, alpha)
    frac_y, frac_r = BatchLoss(torch.tensor(0.0), log_q_y, log_q_r, alpha).clipped()
    assert frac_y == pytest.approx(float((gy == 0).double().mean()), abs=1e-6)  # (a float32 mean)
    assert frac_r == pytest.approx(float((gr == 0).double().mean()), abs=1e-6)
    assert 0.1 < frac_y < 0.9 and 0.1 < frac_r < 0.9


# ---------------------------------------------------------------------------------------------------------
# the per-token-mean ablation moves the threshold to (1 − α)^T
# ---------------------------------------------------------------------------------------------------------


def _refusal_token_grads(token_logp: float, reduction: str, alpha: float = ALPHA, t: int = T_REFUSAL):
    """Gradient w.r.t. each of the refusal's T token log-probs (all equal to `token_logp`) of the TV loss on the
    sequence log-prob ("sum") or on the per-token mean ("mean"), the y term clipped away."""
    tokens = torch.full((t,), token_logp, dtype=F64, requires_grad=True)
    log_q_r = tokens.sum() if reduction == "sum" else tokens.mean()
    loss = tv_disp_loss(torch.tensor(0.0, dtype=F64), log_q_r, torch.tensor(alpha, dtype=F64))
    (grad,) = torch.autograd.grad(loss, tokens)
    return grad


def _stopping_point(reduction: str) -> float:
    """The sequence probability q(y_r) = exp(T ℓ) at which the refusal term stops pushing, by bisection on ℓ."""
    lo, hi = math.log(1e-6) / T_REFUSAL, 0.0  # pushing at lo, not pushing at hi
    assert _refusal_token_grads(lo, reduction).abs().sum() > 0
    assert _refusal_token_grads(hi, reduction).abs().sum() == 0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _refusal_token_grads(mid, reduction).abs().sum() > 0:
            lo = mid
        else:
            hi = mid
    return math.exp(T_REFUSAL * hi)


def test_the_per_token_mean_ablation_stops_pushing_the_refusal_at_one_minus_alpha_to_the_t():
    assert 0.95**13 == pytest.approx(0.5133, abs=1e-4)
    assert _stopping_point("sum") == pytest.approx(1 - ALPHA, rel=1e-12)  # Eq. 4 as written
    assert _stopping_point("mean") == pytest.approx((1 - ALPHA) ** T_REFUSAL, rel=1e-12)  # ≈ 0.513
    # Between the two, the mean version has stopped while Eq. 4 still pushes every token with 1 − α.
    token_logp = math.log(0.7) / T_REFUSAL  # q(y_r) = 0.7
    assert torch.equal(_refusal_token_grads(token_logp, "mean"), torch.zeros(T_REFUSAL, dtype=F64))
    assert torch.allclose(
        _refusal_token_grads(token_logp, "sum"), torch.full((T_REFUSAL,), -(1 - ALPHA), dtype=F64)
    )
    # The default is Eq. 4; the mean is an ablation whose config comment states these numbers.
    assert DistillConfig().reduction == "sum"


# ---------------------------------------------------------------------------------------------------------
# brute force: gradient descent on a two-point teacher
# ---------------------------------------------------------------------------------------------------------


Q_Y = 0.01  # the student's q(y), held at its start below α (the y term stays active but cannot move)


def _student(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A student over {y, y_r, other}: q(y) = Q_Y fixed, q(y_r) = (1 − Q_Y) σ(u), other = the rest."""
    log_q_y = torch.full_like(u, math.log(Q_Y))
    log_q_r = math.log(1 - Q_Y) + torch.nn.functional.logsigmoid(u)
    return log_q_y, log_q_r


def _loss(loss_fn, u: torch.Tensor) -> torch.Tensor:
    log_q_y, log_q_r = _student(u)
    # The teacher's base model samples y with probability 1, so E_y[L] is L(y): p = α δ_y + (1 − α) δ_{y_r}.
    return loss_fn(log_q_y, log_q_r, torch.tensor(ALPHA, dtype=F64))


def test_expected_tv_loss_on_the_grid_is_flat_exactly_from_q_r_equal_one_minus_alpha():
    q_r = torch.linspace(0.001, 1 - Q_Y - 1e-9, 20001, dtype=F64)
    u = torch.logit(q_r / (1 - Q_Y))
    tv = _loss(tv_disp_loss, u)
    y_term = ALPHA * math.log(ALPHA / Q_Y)  # active, constant: q(y) is held below α
    at_min = torch.isclose(tv, torch.tensor(y_term, dtype=F64), rtol=0, atol=1e-12)
    assert q_r[at_min].min() == pytest.approx(1 - ALPHA, abs=1e-4)
    assert bool(at_min[q_r >= 1 - ALPHA + 1e-9].all()) and not bool(at_min[q_r < 1 - ALPHA - 1e-9].any())
    assert bool((tv[1:] <= tv[:-1] + 1e-15).all())  # non-increasing in q(y_r)
    kl = _loss(kl_disp_loss, u)
    assert int(kl.argmin()) == len(q_r) - 1  # KL's minimum is at the edge: all the mass it can get


def _descend(loss_fn, steps: int, lr: float = 0.5) -> tuple[list[float], float]:
    u = torch.tensor(math.log(0.1 / 0.9), dtype=F64, requires_grad=True)  # q(y_r) ≈ 0.099 at the start
    trace = []
    for _ in range(steps):
        (grad,) = torch.autograd.grad(_loss(loss_fn, u), u)
        with torch.no_grad():
            u -= lr * grad
        trace.append(float(_student(u.detach())[1].exp()))
    return trace, float(grad)


def test_gradient_descent_on_tv_raises_the_refusal_to_one_minus_alpha_and_stops_there():
    trace, last_grad = _descend(tv_disp_loss, steps=3000)
    first_stop = next(i for i, q in enumerate(trace) if q >= 1 - ALPHA)
    assert trace[0] < 0.2 and first_stop < 2500
    final = trace[-1]
    assert 1 - ALPHA <= final <= 1 - ALPHA + 2e-3  # at most one step past the threshold
    assert last_grad == 0.0 and all(q == final for q in trace[first_stop:])  # and not a bit further
    # KL-DiSP keeps pushing past 1 − α towards all the mass it can get (1 − q(y) = 0.99).
    kl_trace, kl_grad = _descend(kl_disp_loss, steps=3000)
    assert kl_trace[-1] > 1 - ALPHA + 0.02 and kl_grad < 0
    assert kl_trace[-1] > kl_trace[first_stop + 100]


def test_gradient_descent_with_a_per_token_weight_stops_at_the_same_point():
    weighted = lambda ly, lr, a: tv_disp_loss(ly, lr, a, weight_r=1.0 / T_REFUSAL)  # noqa: E731
    trace, last_grad = _descend(weighted, steps=3000, lr=0.5 * T_REFUSAL)
    assert last_grad == 0.0 and 1 - ALPHA <= trace[-1] <= 1 - ALPHA + 2e-3
