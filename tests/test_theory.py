"""Brute-force checks of dispsafe_nb.theory: every claim is compared with an independent computation."""

from __future__ import annotations

import inspect
import itertools
import math
import re

import numpy as np
import pytest
import torch

from dispsafe_nb import theory as th


def _rand_dist(rng: np.random.Generator, *shape: int, conc: float = 1.0) -> np.ndarray:
    g = rng.gamma(conc, size=shape) + 1e-300
    return g / g.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# TV, KL, variational form, Pinsker
# ----------------------------------------------------------------------------------------------------------


def test_tv_equals_max_over_all_subsets():
    rng = np.random.default_rng(0)
    k = 5
    subsets = np.array(list(itertools.product([0, 1], repeat=k)), dtype=float)  # all 2^k events A
    for _ in range(200):
        p, q = _rand_dist(rng, k, conc=0.5), _rand_dist(rng, k, conc=0.5)
        brute = np.max(subsets @ (p - q))  # max_A p(A) - q(A)
        assert float(th.tv_distance(p, q)) == pytest.approx(brute, abs=1e-14)
        assert float(th.tv_distance(p, q)) == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-15)


def test_tv_known_values_batched_and_inputs():
    assert float(th.tv_distance([1.0, 0.0], [0.0, 1.0])) == 1.0
    assert float(th.tv_distance([0.5, 0.5], [0.5, 0.5])) == 0.0
    assert float(th.tv_distance(np.array([0.2, 0.3, 0.5]), torch.tensor([0.5, 0.3, 0.2]))) == pytest.approx(
        0.3
    )
    rng = np.random.default_rng(1)
    p, q = _rand_dist(rng, 2, 3, 4), _rand_dist(rng, 2, 3, 4)
    out = th.tv_distance(p, q)
    assert out.shape == (2, 3) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), 0.5 * np.abs(p - q).sum(-1), atol=1e-15)


@pytest.mark.parametrize(
    "p, q, match",
    [
        ([0.5, 0.6], [0.5, 0.5], "sum to 1"),
        ([1.2, -0.2], [0.5, 0.5], "negative"),
        ([0.5, 0.5], [0.3, 0.3, 0.4], "same shape"),
        ([float("nan"), 1.0], [0.5, 0.5], "non-finite"),
    ],
)
def test_tv_validation_errors(p, q, match):
    with pytest.raises(ValueError, match=match):
        th.tv_distance(p, q)


def test_kl_values_and_conventions():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p, q = _rand_dist(rng, 6, conc=0.3), _rand_dist(rng, 6)
        brute = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)
        assert float(th.kl_divergence(p, q)) == pytest.approx(brute, rel=1e-12, abs=1e-15)
        assert float(th.kl_divergence(p, q)) >= 0.0
    assert float(th.kl_divergence([1.0, 0.0], [0.5, 0.5])) == pytest.approx(math.log(2))  # 0 log 0 = 0
    assert float(th.kl_divergence([0.5, 0.5], [1.0, 0.0])) == math.inf
    assert float(th.kl_divergence([0.3, 0.7], [0.3, 0.7])) == 0.0


def test_kl_gradient_no_nan_with_zero_mass():
    p = torch.tensor([0.0, 0.4, 0.6], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64, requires_grad=True)
    q = torch.softmax(logits, -1)
    th.kl_divergence(p, q).backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(logits.grad).all()
    # d KL / d logits = q - p for softmax q
    np.testing.assert_allclose(logits.grad.numpy(), (q - p).detach().numpy(), atol=1e-14)


def test_variational_tv_and_theorem_3_1():
    rng = np.random.default_rng(3)
    k = 5
    vertices = np.array(list(itertools.product([0, 1], repeat=k)), dtype=float)
    for _ in range(100):
        p, q = _rand_dist(rng, k, conc=0.7), _rand_dist(rng, k, conc=0.7)
        tv = float(th.tv_distance(p, q))
        value, f_star = th.variational_tv(p, q)
        assert float(value) == pytest.approx(tv, abs=1e-14)
        np.testing.assert_array_equal(f_star.numpy(), (p > q).astype(float))
        # sup over the cube is attained at a vertex: brute force over all indicators
        assert max(float(th.expectation_gap(p, q, f)) for f in vertices) == pytest.approx(tv, abs=1e-14)
        # |gap| <= TV for random [0, 1] scores
        f = rng.uniform(size=(50, k))
        assert (th.expectation_gap(p, q, f).abs() <= tv + 1e-12).all()


def test_kl_bounds_values():
    assert float(th.pinsker_bound(0.5)) == pytest.approx(0.5)
    assert float(th.bretagnolle_huber_bound(math.log(2))) == pytest.approx(math.sqrt(0.5))
    # small KL: Pinsker is tighter; large KL: Bretagnolle-Huber is tighter and Pinsker is vacuous
    assert float(th.pinsker_bound(0.1)) < float(th.bretagnolle_huber_bound(0.1))
    assert float(th.bretagnolle_huber_bound(3.0)) < float(th.pinsker_bound(3.0))
    assert float(th.tv_upper_bound_from_kl(0.1)) == pytest.approx(math.sqrt(0.05))
    assert float(th.tv_upper_bound_from_kl(3.0)) == pytest.approx(math.sqrt(1 - math.exp(-3.0)))
    assert float(th.tv_upper_bound_from_kl(math.inf)) == 1.0
    assert float(th.tv_upper_bound_from_kl(0.0)) == 0.0
    # Pinsker is asymptotically tight for Bernoulli(1/2 + e) vs Bernoulli(1/2 - e): TV = 2e, KL ~ 8e^2
    e = 1e-3
    p, q = [0.5 + e, 0.5 - e], [0.5 - e, 0.5 + e]
    ratio = float(th.tv_distance(p, q) / th.pinsker_bound(th.kl_divergence(p, q)))
    assert 0.999 < ratio <= 1.0


def test_random_bound_checks():
    res = th.random_bound_checks(n_trials=4000, k=6, seed=0)
    assert res["max_variational_violation"] <= 1e-12
    assert res["max_pinsker_violation"] <= 1e-12
    assert res["max_bh_violation"] <= 1e-12
    assert res["max_fstar_equality_error"] <= 1e-12
    assert res["tv"].shape == res["kl"].shape == (4000,)
    # the trials cover the whole range, so the checks are not vacuous
    assert res["tv"].min() < 0.05 and res["tv"].max() > 0.9
    assert np.isfinite(res["kl"]).mean() > 0.5
    again = th.random_bound_checks(n_trials=4000, k=6, seed=0)
    np.testing.assert_array_equal(res["tv"], again["tv"])


# ----------------------------------------------------------------------------------------------------------
# safe system
# ----------------------------------------------------------------------------------------------------------


def test_safe_system_small_example():
    base = [0.5, 0.3, 0.2]
    alpha = [1.0, 0.5, 0.0]
    d = th.safe_system_distribution(base, alpha)
    np.testing.assert_allclose(d.numpy(), [0.5, 0.15, 0.0, 0.35], atol=1e-15)
    merged = th.safe_system_distribution(base, alpha, refusal_index=2)  # response 2 is the refusal itself
    np.testing.assert_allclose(merged.numpy(), [0.5, 0.15, 0.35], atol=1e-15)
    assert th.safe_system_distribution(base, alpha, refusal_index=-1).numpy()[2] == pytest.approx(0.35)
    with pytest.raises(ValueError):
        th.safe_system_distribution(base, [1.2, 0.5, 0.0])
    with pytest.raises(ValueError):
        th.safe_system_distribution(base, alpha, refusal_index=3)


def test_safe_system_batched_sums_to_one():
    rng = np.random.default_rng(4)
    base, alpha = _rand_dist(rng, 7, 4), rng.uniform(size=(7, 4))
    d = th.safe_system_distribution(base, alpha)
    assert d.shape == (7, 5)
    np.testing.assert_allclose(d.sum(-1).numpy(), 1.0, atol=1e-14)
    assert (d >= 0).all()


def test_safe_system_matches_sampling():
    rng = np.random.default_rng(5)
    base, alpha = _rand_dist(rng, 4), rng.uniform(size=4)
    exact = th.safe_system_distribution(base, alpha).numpy()
    n = 200_000
    y = rng.choice(4, size=n, p=base)
    kept = rng.uniform(size=n) < alpha[y]  # guard says safe with probability alpha(y)
    r = np.where(kept, y, 4)
    freq = np.bincount(r, minlength=5) / n
    tol = 5 * np.sqrt(exact * (1 - exact) / n) + 1e-4
    assert (np.abs(freq - exact) <= tol).all()


def test_safety_rate_gap_bounded_by_tv():
    rng = np.random.default_rng(6)
    for _ in range(100):
        base, alpha = _rand_dist(rng, 5), rng.uniform(size=5)
        p = th.safe_system_distribution(base, alpha)
        q = torch.as_tensor(_rand_dist(rng, 6, conc=0.5))
        mask = rng.integers(0, 2, size=6).astype(bool)
        gap = abs(float(th.safety_rate(p, mask) - th.safety_rate(q, mask)))
        assert gap <= float(th.tv_distance(p, q)) + 1e-12
    assert float(th.safety_rate([0.2, 0.3, 0.5], [True, False, True])) == pytest.approx(0.7)


# ----------------------------------------------------------------------------------------------------------
# two-point surrogates
# ----------------------------------------------------------------------------------------------------------


def _direct_tv_loss(qy: float, qr: float, a: float) -> float:
    """The paper's formula typed out, for 0 < a < 1."""
    return -a * min(math.log(qy) - math.log(a), 0) - (1 - a) * min(math.log(qr) - math.log(1 - a), 0)


def test_tv_and_kl_loss_values():
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = rng.uniform(0.01, 0.99)
        qy, qr = rng.uniform(1e-4, 0.5, size=2)
        got = float(th.tv_disp_loss(math.log(qy), math.log(qr), a))
        assert got == pytest.approx(_direct_tv_loss(qy, qr, a), abs=1e-13)
        kl = float(th.kl_disp_loss(math.log(qy), math.log(qr), a))
        assert kl == pytest.approx(-a * math.log(qy) - (1 - a) * math.log(qr), abs=1e-13)
    # elementwise / broadcast
    out = th.tv_disp_loss(np.log([0.1, 0.2, 0.3]), math.log(0.4), [0.2, 0.5, 0.9])
    assert out.shape == (3,)


def test_tv_loss_gradient_clip():
    a = 0.3
    grid = np.linspace(0.01, 0.69, 69)  # q_y values, q_r kept below 1 - a so its term is active
    gy, gr = th.surrogate_grads(np.log(grid), math.log(0.2), a, loss="tv")
    below = grid < a
    np.testing.assert_array_equal(gy.numpy()[below], -a)
    np.testing.assert_array_equal(gy.numpy()[~below], 0.0)  # exactly 0 from q_y >= a on
    np.testing.assert_allclose(gr.numpy(), -(1 - a))
    # exactly at the clip the gradient is 0 too
    gy_eq, _ = th.surrogate_grads(math.log(a), math.log(0.2), a)
    assert float(gy_eq) == 0.0
    # the refusal term clips at q_r >= 1 - a
    _, gr_hi = th.surrogate_grads(math.log(0.1), math.log(0.8), a)
    assert float(gr_hi) == 0.0
    # KL never clips
    gy_kl, gr_kl = th.surrogate_grads(np.log(grid), math.log(0.8), a, loss="kl")
    np.testing.assert_allclose(gy_kl.numpy(), -a)
    np.testing.assert_allclose(gr_kl.numpy(), -(1 - a))


@pytest.mark.parametrize("loss", ["tv", "kl"])
def test_surrogate_grads_match_finite_differences(loss):
    rng = np.random.default_rng(8)
    fn = th.tv_disp_loss if loss == "tv" else th.kl_disp_loss
    h = 1e-6
    for _ in range(50):
        a = rng.uniform(0.05, 0.95)
        ly, lr = np.log(rng.uniform(0.01, 0.99, size=2))
        if min(abs(ly - math.log(a)), abs(lr - math.log(1 - a))) < 1e-3:
            continue  # finite differences are meaningless across the kink
        gy, gr = th.surrogate_grads(ly, lr, a, loss=loss)
        fd_y = (float(fn(ly + h, lr, a)) - float(fn(ly - h, lr, a))) / (2 * h)
        fd_r = (float(fn(ly, lr + h, a)) - float(fn(ly, lr - h, a))) / (2 * h)
        assert float(gy) == pytest.approx(fd_y, abs=1e-7)
        assert float(gr) == pytest.approx(fd_r, abs=1e-7)


@pytest.mark.parametrize("fn", [th.tv_disp_loss, th.kl_disp_loss])
def test_hard_alpha_edge_cases_are_finite(fn):
    # a = 1: the refusal term has zero weight, even if the student gives the refusal zero mass (log q_r = -inf)
    ly = torch.tensor([math.log(0.3), math.log(0.3)], dtype=torch.float64, requires_grad=True)
    lr = torch.tensor([-math.inf, math.log(0.5)], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    val = fn(ly, lr, a)
    np.testing.assert_allclose(val.detach().numpy(), -math.log(0.3), atol=1e-14)
    val.sum().backward()
    for g in (ly.grad, lr.grad, a.grad):
        assert torch.isfinite(g).all()
    np.testing.assert_array_equal(lr.grad.numpy(), 0.0)
    np.testing.assert_allclose(ly.grad.numpy(), -1.0)
    # a = 0: the response term has zero weight
    ly0 = torch.tensor([-math.inf], dtype=torch.float64, requires_grad=True)
    lr0 = torch.tensor([math.log(0.4)], dtype=torch.float64, requires_grad=True)
    val0 = fn(ly0, lr0, torch.zeros(1, dtype=torch.float64))
    assert float(val0.detach()) == pytest.approx(-math.log(0.4))
    val0.sum().backward()
    assert float(ly0.grad) == 0.0 and float(lr0.grad) == pytest.approx(-1.0)


def test_hard_alpha_tv_equals_kl():
    rng = np.random.default_rng(9)
    ly, lr = np.log(rng.uniform(0.01, 1, size=(2, 100)))
    a = rng.integers(0, 2, size=100).astype(float)
    np.testing.assert_allclose(th.tv_disp_loss(ly, lr, a).numpy(), th.kl_disp_loss(ly, lr, a).numpy())


def test_atomwise_inequality():
    # w [log(w / q)]_+ >= [w - q]_+   (log t >= 1 - 1/t)
    rng = np.random.default_rng(10)
    w, q = rng.uniform(1e-6, 1, size=(2, 100_000))
    lhs = w * np.maximum(np.log(w / q), 0)
    assert (lhs - np.maximum(w - q, 0) >= -1e-15).all()


def test_tv_loss_bounds_tv_and_kl_of_two_point_teacher():
    """L_TV(y) >= TV(a_y, q) and >= KL(a_y || q), for full student distributions q over K + 1 outcomes."""
    rng = np.random.default_rng(11)
    k = 4
    for _ in range(500):
        q = _rand_dist(rng, k + 1, conc=rng.choice([0.3, 1.0, 5.0]))
        y = rng.integers(0, k)
        a = rng.choice([rng.uniform(), 0.0, 1.0])
        two_point = np.zeros(k + 1)
        two_point[y], two_point[k] = a, 1 - a
        loss = float(th.tv_disp_loss(math.log(q[y]), math.log(q[k]), a))
        assert loss >= float(th.tv_distance(two_point, q)) - 1e-12
        assert loss >= float(th.kl_divergence(two_point, q)) - 1e-12
        # KL loss = KL(a_y || q) + H(a)
        h = -sum(x * math.log(x) for x in (a, 1 - a) if x > 0)
        kl_loss = float(th.kl_disp_loss(math.log(q[y]), math.log(q[k]), a))
        assert kl_loss == pytest.approx(float(th.kl_divergence(two_point, q)) + h, abs=1e-12)
    # zero exactly at q = a_y
    assert float(th.tv_disp_loss(math.log(0.3), math.log(0.7), 0.3)) == 0.0


def test_expected_tv_loss_upper_bounds_tv_to_teacher():
    rng = np.random.default_rng(12)
    k = 4
    for _ in range(300):
        base, alpha = _rand_dist(rng, k), rng.uniform(size=k)
        teacher = th.safe_system_distribution(base, alpha)
        q = torch.as_tensor(_rand_dist(rng, k + 1, conc=rng.choice([0.3, 1.0, 5.0])))
        expected = float(th.expected_disp_loss(q.log(), base, alpha, loss="tv"))
        # mixture bound: TV(p, q) <= E_y TV(a_y, q) <= E_y L_TV(y)
        mix = 0.0
        for y in range(k):
            two_point = np.zeros(k + 1)
            two_point[y], two_point[k] = alpha[y], 1 - alpha[y]
            mix += base[y] * float(th.tv_distance(two_point, q))
        assert float(th.tv_distance(teacher, q)) <= mix + 1e-12 <= expected + 2e-12


def test_bound_fails_when_sample_is_the_refusal():
    # documented caveat: if y == y_r the two atoms merge and the per-sample loss can be 0 with TV = 0.5
    q = np.array([0.5, 0.5])  # outcome 1 is the refusal
    assert float(th.tv_disp_loss(math.log(q[1]), math.log(q[1]), 0.5)) == 0.0
    assert float(th.tv_distance([0.0, 1.0], q)) == 0.5


def _expected_on_simplex(q: np.ndarray, base, alpha, loss: str) -> float:
    return float(th.expected_disp_loss(np.log(q), base, alpha, loss=loss))


def test_kl_minimiser_is_teacher_but_tv_minimiser_is_not():
    base, alpha = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    teacher = th.safe_system_distribution(base, alpha).numpy()  # (0.45, 0.05, 0.5)
    # clipped-NLL minimiser: the refusal terms of the benign sample (1 - a = 0.1) are clipped, the others
    # give a weighted NLL with weights (0.45, 0.05, 0.45) -> q = weights / 0.95
    tv_min = np.array([0.45, 0.05, 0.45]) / 0.95
    rng = np.random.default_rng(13)
    for _ in range(300):
        d = rng.normal(size=3)
        d -= d.mean()  # stay on the simplex
        eps = rng.uniform(1e-4, 0.02)
        assert _expected_on_simplex(tv_min + eps * d, base, alpha, "tv") >= _expected_on_simplex(
            tv_min, base, alpha, "tv"
        )
        assert _expected_on_simplex(teacher + eps * d, base, alpha, "kl") >= _expected_on_simplex(
            teacher, base, alpha, "kl"
        )
    # the TV minimiser refuses less than the teacher, and it is strictly better than the teacher for L_TV
    assert tv_min[2] < teacher[2]
    assert (
        _expected_on_simplex(tv_min, base, alpha, "tv")
        < _expected_on_simplex(teacher, base, alpha, "tv") - 1e-3
    )


@pytest.mark.parametrize("loss", ["tv", "kl"])
def test_refusal_logit_grad_closed_form(loss):
    rng = np.random.default_rng(14)
    for _ in range(200):
        z = torch.tensor(
            rng.normal(scale=2.0, size=4), dtype=torch.float64, requires_grad=True
        )  # y = 0, r = 3
        a = float(rng.uniform(0.02, 0.98))
        lq = torch.log_softmax(z, -1)
        q = lq.exp().detach()
        if min(abs(q[0] - a), abs(q[3] - (1 - a))) < 1e-9:
            continue
        fn = th.tv_disp_loss if loss == "tv" else th.kl_disp_loss
        fn(lq[0], lq[3], a).backward()
        closed = float(th.refusal_logit_grad(q[0], q[3], a, loss=loss))
        assert float(z.grad[3]) == pytest.approx(closed, abs=1e-12)


def test_expected_disp_loss_shapes_and_zero_base_mass():
    lq = torch.log(torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64))
    out = th.expected_disp_loss(lq, [[0.0, 1.0]], [[0.5, 0.9]], loss="tv")  # response 0 never sampled
    assert out.shape == (1,) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        th.expected_disp_loss(lq, [[0.5, 0.5]], [[0.5, 0.5]], loss="hinge")
    with pytest.raises(ValueError):
        th.expected_disp_loss(lq[..., :2], [[0.5, 0.5]], [[0.5, 0.5]])


# ----------------------------------------------------------------------------------------------------------
# sequence level
# ----------------------------------------------------------------------------------------------------------


def test_sequence_distribution_exact():
    V, T = 3, 3
    tables = th.random_conditional_tables(V, T, seed=0)
    P = th.sequence_distribution(tables, V, T)
    assert P.shape == (3, 3, 3)
    assert float(P.sum()) == pytest.approx(1.0, abs=1e-14)
    seq = (2, 0, 1)
    assert float(P[seq]) == pytest.approx(tables[()][2] * tables[(2,)][0] * tables[(2, 0)][1], rel=1e-14)
    # marginal of the first token equals the first conditional
    np.testing.assert_allclose(P.sum((1, 2)).numpy(), tables[()], atol=1e-15)


@pytest.mark.parametrize("V, T", [(3, 3), (2, 4)])
def test_sequence_tv_bound(V, T):
    slack = []
    for seed in range(150):
        p = th.random_conditional_tables(V, T, seed=seed, concentration=0.5)
        q = th.random_conditional_tables(V, T, seed=10_000 + seed, concentration=0.5)
        res = th.sequence_tv_bound_check(p, q, V, T)
        assert res["tv_seq"] <= res["bound"] + 1e-12
        assert len(res["per_position"]) == T
        slack.append(res["bound"] - res["tv_seq"])
        same = th.sequence_tv_bound_check(p, p, V, T)
        assert same["tv_seq"] == 0.0 and same["bound"] == 0.0
    assert min(slack) >= -1e-12 and max(slack) > 0.05  # not vacuous: the bound is often loose


def test_sequence_tv_bound_tight_when_only_first_token_differs():
    V, T = 3, 3
    p = th.random_conditional_tables(V, T, seed=1)
    q = dict(p)
    q[()] = np.array([0.6, 0.3, 0.1])
    res = th.sequence_tv_bound_check(p, q, V, T)
    assert res["tv_seq"] == pytest.approx(res["bound"], abs=1e-14)
    assert res["tv_seq"] == pytest.approx(float(th.tv_distance(p[()], q[()])), abs=1e-14)


@pytest.mark.parametrize("V, T", [(3, 3), (2, 4)])
def test_sequence_kl_chain_rule(V, T):
    for seed in range(40):
        p = th.random_conditional_tables(V, T, seed=seed)
        q = th.random_conditional_tables(V, T, seed=500 + seed)
        res = th.sequence_kl_chain_rule(p, q, V, T)
        assert res["kl_seq"] == pytest.approx(res["chain_sum"], rel=1e-10, abs=1e-13)
        assert res["kl_seq"] > 0


# ----------------------------------------------------------------------------------------------------------
# toy experiment
# ----------------------------------------------------------------------------------------------------------


def test_toy_overrefusal_experiment():
    kw = dict(n_prompts=12, n_responses=4, steps=25, lr=0.05, seed=3)
    res = th.toy_overrefusal_experiment(**kw)
    again = th.toy_overrefusal_experiment(**kw)
    for loss in ("tv", "kl"):
        hist = res[loss]
        for key in ("loss", "refusal_benign", "refusal_harmful", "tv"):
            assert hist[key].shape == (26,)
            assert np.isfinite(hist[key]).all()
            np.testing.assert_array_equal(hist[key], again[loss][key])
        assert hist["loss"][-1] < hist["loss"][0] - 1e-3
        assert ((hist["refusal_benign"] >= 0) & (hist["refusal_benign"] <= 1)).all()
    # both start from the same frozen student
    assert res["tv"]["refusal_benign"][0] == res["kl"]["refusal_benign"][0]
    t = res["teacher"]
    assert 0 <= t["refusal_benign"] < t["refusal_harmful"] <= 1
    np.testing.assert_allclose(t["distribution"].sum(-1), 1.0, atol=1e-12)
    other = th.toy_overrefusal_experiment(**{**kw, "seed": 4})
    assert not np.array_equal(other["tv"]["loss"], res["tv"]["loss"])


# ----------------------------------------------------------------------------------------------------------
# validation messages, dtypes and edge cases
# ----------------------------------------------------------------------------------------------------------


def _raises(message):
    """pytest.raises(ValueError) for exactly this message."""
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("fn", [th.tv_distance, th.kl_divergence, th.variational_tv])
def test_distribution_checks_name_the_bad_argument(fn):
    good = [0.5, 0.5]
    for name, bad_at in (("p", 0), ("q", 1)):
        args = [good, good]
        args[bad_at] = [0.5, 0.6]
        with _raises(f"{name} does not sum to 1 along the last axis (max |sum - 1| = 0.1)"):
            fn(*args)
        args[bad_at] = [1.25, -0.25]
        with _raises(f"{name} has negative entries (min -0.25)"):
            fn(*args)
        args[bad_at] = [math.inf, 0.0]
        with _raises(f"{name} contains non-finite values"):
            fn(*args)
    with _raises("p must have at least one axis (the outcomes), got a scalar"):
        fn(1.0, 1.0)
    with _raises("p and q must have the same shape, got (2,) and (3,)"):
        fn(good, [0.2, 0.3, 0.5])


def test_validation_can_be_skipped_and_is_on_by_default():
    # improper inputs are computed as given when validate=False (used on already-normalised tensors)
    assert float(th.tv_distance([0.5, 0.7], [0.5, 0.5], validate=False)) == pytest.approx(0.1)
    assert float(th.kl_divergence([0.5, 0.7], [0.5, 0.5], validate=False)) == pytest.approx(
        0.7 * math.log(1.4)
    )
    with _raises("p does not sum to 1 along the last axis (max |sum - 1| = 0.2)"):
        th.kl_divergence([0.5, 0.7], [0.5, 0.5])
    # within the tolerance (1e-6) a row counts as summing to one
    assert float(th.tv_distance([0.5, 0.5 + 5e-7], [0.5, 0.5])) == pytest.approx(2.5e-7)


def test_every_input_type_becomes_float64():
    for p in (
        [0.25, 0.75],
        np.array([0.25, 0.75], dtype=np.float32),
        np.array([0.25, 0.75], dtype=np.longdouble),
        torch.tensor([0.25, 0.75], dtype=torch.float32),
        torch.tensor([0.25, 0.75], dtype=torch.float16),
    ):
        out = th.tv_distance(p, [0.5, 0.5])
        assert out.dtype == torch.float64 and float(out) == 0.25
        assert th.kl_divergence(p, [0.5, 0.5]).dtype == torch.float64
        assert th.safe_system_distribution(p, [1.0, 0.5]).dtype == torch.float64
    # a float32 tensor keeps its graph through the conversion
    x = torch.tensor([0.25, 0.75], requires_grad=True)
    th.tv_distance(x, [0.5, 0.5]).backward()
    assert x.grad.dtype == torch.float32 and x.grad.tolist() == [-0.5, 0.5]


@pytest.mark.parametrize(
    "call",
    [
        lambda a: th.safe_system_distribution([0.5, 0.5], a),
        lambda a: th.tv_disp_loss([-1.0, -1.0], [-1.0, -1.0], a),
        lambda a: th.kl_disp_loss([-1.0, -1.0], [-1.0, -1.0], a),
        lambda a: th.surrogate_grads([-1.0, -1.0], [-1.0, -1.0], a),
        lambda a: th.expected_disp_loss(np.log([0.2, 0.3, 0.5]), [0.5, 0.5], a),
    ],
)
def test_alpha_outside_the_unit_interval_is_rejected(call):
    for bad in ([0.5, 1.5], [-0.5, 0.5], [math.nan, 0.5], [math.inf, 0.5]):
        with _raises("alpha must lie in [0, 1]"):
            call(bad)
    call([0.0, 1.0])  # the ends are fine


def test_safety_rate_checks_its_mask_and_works_per_row():
    with _raises("safe_mask must lie in [0, 1]"):
        th.safety_rate([0.5, 0.5], [1.0, 2.0])
    with _raises("safe_mask must lie in [0, 1]"):
        th.safety_rate([0.5, 0.5], [-1.0, 0.0])
    dists = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    rates = th.safety_rate(dists, [1.0, 0.5, 0.0])
    assert rates.shape == (2,) and rates.tolist() == pytest.approx([0.35, 0.8])


def test_safe_system_refusal_index_range_and_messages():
    base, alpha = [0.5, 0.3, 0.2], [1.0, 0.5, 0.0]
    # every index in [-K, K) names a response; -K is response 0
    np.testing.assert_allclose(
        th.safe_system_distribution(base, alpha, refusal_index=-3).numpy(), [0.85, 0.15, 0.0]
    )
    np.testing.assert_allclose(
        th.safe_system_distribution(base, alpha, refusal_index=0).numpy(), [0.85, 0.15, 0.0]
    )
    for bad in (3, -4):
        with _raises(f"refusal_index {bad} out of range for 3 responses"):
            th.safe_system_distribution(base, alpha, refusal_index=bad)
    with _raises("base_probs does not sum to 1 along the last axis (max |sum - 1| = 0.5)"):
        th.safe_system_distribution([0.5, 1.0], [1.0, 1.0])
    merged = th.safe_system_distribution(np.array([[0.5, 0.5], [1.0, 0.0]]), [[0.2, 1.0], [0.5, 0.5]], 1)
    assert merged.dtype == torch.float64
    np.testing.assert_allclose(merged.numpy(), [[0.1, 0.9], [0.5, 0.5]], atol=1e-15)


def test_variational_tv_picks_strict_excess_and_returns_float_scores():
    p, q = [0.4, 0.3, 0.3], [0.2, 0.3, 0.5]  # outcome 1 is a tie: not part of the optimal event
    value, f_star = th.variational_tv(p, q)
    assert f_star.dtype == torch.float64 and f_star.tolist() == [1.0, 0.0, 0.0]
    assert float(value) == pytest.approx(0.2)


def test_loss_names_and_defaults():
    with _raises("loss must be one of ['kl', 'tv'], got 'hinge'"):
        th.surrogate_grads(-1.0, -1.0, 0.5, loss="hinge")
    with _raises("loss must be one of ['kl', 'tv'], got 'hinge'"):
        th.refusal_logit_grad(0.1, 0.2, 0.5, loss="hinge")
    lq = np.log([0.01, 0.04, 0.95])
    tv = th.expected_disp_loss(lq, [0.5, 0.5], [0.9, 0.2])  # default: TV
    assert float(tv) == float(th.expected_disp_loss(lq, [0.5, 0.5], [0.9, 0.2], loss="tv"))
    assert float(tv) != pytest.approx(float(th.expected_disp_loss(lq, [0.5, 0.5], [0.9, 0.2], loss="kl")))
    assert float(th.refusal_logit_grad(0.9, 0.95, 0.2)) == float(
        th.refusal_logit_grad(0.9, 0.95, 0.2, loss="tv")
    )
    assert float(th.refusal_logit_grad(0.9, 0.95, 0.2)) != float(
        th.refusal_logit_grad(0.9, 0.95, 0.2, loss="kl")
    )
    with _raises("student_log_probs needs K + 1 = 3 outcomes, got 2"):
        th.expected_disp_loss(np.log([[0.5, 0.5]]), [[0.5, 0.5]], [[0.5, 0.5]])
    with _raises("student_log_probs needs K + 1 = 3 outcomes, got 4"):
        th.expected_disp_loss(np.log([[0.25] * 4]), [[0.5, 0.5]], [[0.5, 0.5]])


def test_refusal_logit_grad_switches_exactly_at_the_teacher_mass():
    a = 0.25
    # q_y = a exactly: the y term is clipped (gradient 0), so only the refusal term acts
    at_y = float(th.refusal_logit_grad(a, 0.5, a))
    assert at_y == pytest.approx(-(1 - a) * (1 - 0.5))
    below_y = float(th.refusal_logit_grad(np.nextafter(a, 0), 0.5, a))
    assert below_y == pytest.approx(a * 0.5 - (1 - a) * 0.5)
    # q_r = 1 - a exactly: the refusal term is clipped
    at_r = float(th.refusal_logit_grad(0.1, 1 - a, a))
    assert at_r == pytest.approx(a * (1 - a))
    below_r = float(th.refusal_logit_grad(0.1, np.nextafter(1 - a, 0), a))
    assert below_r == pytest.approx(a * (1 - a) - (1 - a) * a)
    # the closed form agrees with autograd on the same points
    for qy, qr in ((a, 0.5), (0.1, 1 - a)):
        ly = torch.tensor(math.log(qy), dtype=torch.float64)
        lr = torch.tensor(math.log(qr), dtype=torch.float64)
        gy, gr = th.surrogate_grads(ly, lr, a)
        # dL/dz_r = gy * (-q_r) + gr * (1 - q_r)
        assert float(gy * -qr + gr * (1 - qr)) == pytest.approx(float(th.refusal_logit_grad(qy, qr, a)))


def test_tv_upper_bound_from_kl_is_the_smaller_bound_at_most_one():
    kl = np.array([0.0, 0.05, 1.0, 1.6, 2.0, 10.0, math.inf])
    expected = np.minimum(np.minimum(np.sqrt(kl / 2), np.sqrt(1 - np.exp(-kl))), 1.0)
    np.testing.assert_allclose(th.tv_upper_bound_from_kl(kl).numpy(), expected, rtol=1e-14)
    assert (th.tv_upper_bound_from_kl(kl) <= 1.0).all()


# ----------------------------------------------------------------------------------------------------------
# random draws: exactly the documented draws
# ----------------------------------------------------------------------------------------------------------


def _bound_checks_reference(n_trials: int, k: int, seed: int) -> dict:
    """random_bound_checks in plain numpy, from its docstring (same generator, same draw order)."""
    rng = np.random.default_rng(seed)
    conc = np.exp(rng.uniform(np.log(0.1), np.log(5.0), size=(n_trials, 1)))
    gp = rng.gamma(conc, size=(n_trials, k))
    gq = rng.gamma(conc, size=(n_trials, k))
    p, q = gp / gp.sum(1, keepdims=True), gq / gq.sum(1, keepdims=True)
    f_unif = rng.uniform(size=(n_trials, k))
    f_subset = rng.integers(0, 2, size=(n_trials, k)).astype(float)
    f_star = (p > q).astype(float)
    tv = 0.5 * np.abs(p - q).sum(1)
    with np.errstate(divide="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(1)
    gaps = np.stack([((p - q) * f).sum(1) for f in (f_unif, f_subset, f_star)])
    return {
        "max_variational_violation": (np.abs(gaps) - tv).max(),
        "max_fstar_equality_error": np.abs(gaps[2] - tv).max(),
        "max_pinsker_violation": (tv - np.sqrt(kl / 2)).max(),
        "max_bh_violation": (tv - np.sqrt(-np.expm1(-kl))).max(),
        "tv": tv,
        "kl": kl,
    }


def test_random_bound_checks_are_the_documented_draws():
    res = th.random_bound_checks(n_trials=300, k=4, seed=5)
    ref = _bound_checks_reference(300, 4, 5)
    assert sorted(res) == sorted([*ref, "n_trials", "k"])
    assert (res["n_trials"], res["k"]) == (300, 4)
    for key, value in ref.items():
        np.testing.assert_allclose(res[key], value, rtol=1e-12, atol=1e-15, err_msg=key)
    # the defaults: 5000 trials over 6 outcomes, seed 0
    default = th.random_bound_checks()
    assert (default["n_trials"], default["k"], default["tv"].shape) == (5000, 6, (5000,))
    np.testing.assert_array_equal(default["tv"], th.random_bound_checks(5000, 6, 0)["tv"])


def test_random_conditional_tables_are_the_documented_draws():
    tables = th.random_conditional_tables(2, 3, seed=7, concentration=0.5)
    rng = np.random.default_rng(7)
    prefixes = [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]  # by length, then lexicographic
    assert list(tables) == prefixes
    for prefix in prefixes:
        g = rng.gamma(0.5, size=2)
        np.testing.assert_allclose(tables[prefix], g / g.sum(), rtol=1e-14)
    # the defaults: seed 0, concentration 1
    default = th.random_conditional_tables(3, 2)
    explicit = th.random_conditional_tables(3, 2, seed=0, concentration=1.0)
    assert all(np.array_equal(default[k], explicit[k]) for k in explicit)
    again = th.random_conditional_tables(3, 2)
    assert all(np.array_equal(default[k], again[k]) for k in default)


def test_sequence_checks_skip_unreachable_prefixes():
    # P never emits token 1 first, and after that unreachable prefix P's conditional puts mass where Q has none:
    # the KL there is infinite, but it is weighted by P(prefix) = 0 and must not turn the sum into nan.
    V, T = 2, 2
    p = {(): np.array([1.0, 0.0]), (0,): np.array([0.5, 0.5]), (1,): np.array([1.0, 0.0])}
    q = {(): np.array([0.5, 0.5]), (0,): np.array([0.25, 0.75]), (1,): np.array([0.0, 1.0])}
    kl = th.sequence_kl_chain_rule(p, q, V, T)
    assert sorted(kl) == ["chain_sum", "kl_seq", "per_position"]
    expected = [math.log(2), 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)]
    assert kl["per_position"] == pytest.approx(expected)
    assert kl["chain_sum"] == pytest.approx(sum(expected)) and kl["kl_seq"] == pytest.approx(sum(expected))
    tv = th.sequence_tv_bound_check(p, q, V, T)
    assert sorted(tv) == ["bound", "per_position", "tv_seq"]
    assert tv["per_position"] == pytest.approx([0.5, 0.25])
    assert tv["bound"] == pytest.approx(0.75) and tv["tv_seq"] <= tv["bound"]


# ----------------------------------------------------------------------------------------------------------
# the toy experiment against a reference implementation of its docstring
# ----------------------------------------------------------------------------------------------------------

TOY_DEFAULTS = {  # notebook 01 runs the toy with these (it passes only steps, seed, and once alpha_safe)
    "n_prompts": 20,
    "n_responses": 5,
    "alpha_unsafe": 0.1,
    "alpha_safe": 0.95,
    "harmful_fraction": 0.5,
    "feature_dim": 3,
    "feature_noise": 1.0,
    "base_refusal": 0.01,
    "per_prompt_logits": False,
    "steps": 300,
    "lr": 0.05,
    "seed": 0,
}


def _toy_reference(**kw) -> dict:
    """toy_overrefusal_experiment restated from its docstring: explicit formulas, the same generator draws in the
    same order (harmful set, Dirichlet(1) base, safe slot, alpha jitter, prompt features, response features)."""
    cfg = {**TOY_DEFAULTS, **kw}
    n, K, d, noise = cfg["n_prompts"], cfg["n_responses"], cfg["feature_dim"], cfg["feature_noise"]
    f64 = torch.float64
    gen = torch.Generator().manual_seed(cfg["seed"])
    harmful = torch.zeros(n, dtype=torch.bool)
    harmful[torch.randperm(n, generator=gen)[: int(round(cfg["harmful_fraction"] * n))]] = True
    exp_draws = -torch.log(torch.rand(n, K, generator=gen, dtype=f64))
    base = exp_draws / exp_draws.sum(1, keepdim=True)
    safe_slot = torch.randint(0, K, (n,), generator=gen)
    alpha = torch.empty(n, K, dtype=f64)
    for i in range(n):
        for k in range(K):
            unsafe = bool(harmful[i]) and k != int(safe_slot[i])
            alpha[i, k] = cfg["alpha_unsafe"] if unsafe else cfg["alpha_safe"]
    jitter = torch.rand(n, K, generator=gen, dtype=f64)
    alpha = torch.clamp(alpha + 0.08 * jitter - 0.04, 0.001, 0.999)
    teacher = torch.cat([base * alpha, (base * (1 - alpha)).sum(1, keepdim=True)], 1)
    phi = noise * torch.randn(n, d, generator=gen, dtype=f64)
    phi[:, 0] = phi[:, 0] + harmful.to(f64)
    psi = noise * torch.randn(n, K, d, generator=gen, dtype=f64)
    psi[:, :, 0] = psi[:, :, 0] + (1 - alpha)
    br = cfg["base_refusal"]
    frozen = torch.cat([torch.log(base) + math.log(1 - br), torch.full((n, 1), math.log(br), dtype=f64)], 1)

    def student(params):
        shift = torch.cat([psi @ params["v"], (params["u"] + phi @ params["w"])[:, None]], 1)
        z = params["z"] if cfg["per_prompt_logits"] else 0.0
        return torch.log_softmax(frozen + shift + z, 1)

    def expected_loss(lq, name):
        lq_y, lq_r = lq[:, :K], lq[:, K:]
        if name == "kl":
            per = -alpha * lq_y - (1 - alpha) * lq_r
        else:
            per = alpha * torch.relu(torch.log(alpha) - lq_y) + (1 - alpha) * torch.relu(
                torch.log(1 - alpha) - lq_r
            )
        return (base * per).sum(1).mean()

    out = {}
    for name in ("tv", "kl"):
        params = {
            "u": torch.zeros((), dtype=f64),
            "w": torch.zeros(d, dtype=f64),
            "v": torch.zeros(d, dtype=f64),
        }
        if cfg["per_prompt_logits"]:
            params["z"] = torch.zeros(n, K + 1, dtype=f64)
        for p in params.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(params.values(), lr=cfg["lr"])
        hist = {"loss": [], "refusal_benign": [], "refusal_harmful": [], "tv": []}
        for step in range(cfg["steps"] + 1):
            lq = student(params)
            loss = expected_loss(lq, name)
            q = lq.exp().detach()
            hist["loss"].append(float(loss.detach()))
            hist["refusal_benign"].append(float(q[~harmful, K].mean()))
            hist["refusal_harmful"].append(float(q[harmful, K].mean()))
            hist["tv"].append(float((0.5 * (teacher - q).abs().sum(1)).mean()))
            if step < cfg["steps"]:
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[name] = hist
    out["teacher"] = {
        "refusal_benign": float(teacher[~harmful, K].mean()),
        "refusal_harmful": float(teacher[harmful, K].mean()),
        "harmful": harmful.numpy(),
        "distribution": teacher.numpy(),
    }
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_prompts=8, n_responses=3, steps=6, seed=2),
        dict(n_prompts=6, n_responses=4, feature_dim=2, steps=5, lr=0.2, per_prompt_logits=True, seed=1),
        dict(
            n_prompts=7,
            alpha_unsafe=0.3,
            alpha_safe=0.8,
            harmful_fraction=0.3,
            feature_noise=0.5,
            base_refusal=0.05,
            steps=4,
        ),
    ],
)
def test_toy_experiment_matches_a_reference_implementation(kw):
    res = th.toy_overrefusal_experiment(**kw)
    ref = _toy_reference(**kw)
    assert sorted(res) == ["config", "kl", "teacher", "tv"]
    assert res["config"] == {**TOY_DEFAULTS, **kw}
    for name in ("tv", "kl"):
        assert sorted(res[name]) == ["loss", "refusal_benign", "refusal_harmful", "tv"]
        for key, values in ref[name].items():
            assert res[name][key].shape == (kw["steps"] + 1,)
            np.testing.assert_allclose(
                res[name][key], values, rtol=1e-10, atol=1e-13, err_msg=f"{name} {key}"
            )
    assert sorted(res["teacher"]) == sorted(ref["teacher"])
    np.testing.assert_array_equal(res["teacher"]["harmful"], ref["teacher"]["harmful"])
    np.testing.assert_allclose(
        res["teacher"]["distribution"], ref["teacher"]["distribution"], rtol=1e-13, atol=1e-15
    )
    for key in ("refusal_benign", "refusal_harmful"):
        assert res["teacher"][key] == pytest.approx(ref["teacher"][key], rel=1e-13)


def test_toy_experiment_defaults_and_one_sided_groups():
    assert {
        k: p.default for k, p in inspect.signature(th.toy_overrefusal_experiment).parameters.items()
    } == TOY_DEFAULTS
    start = th.toy_overrefusal_experiment(steps=0)
    assert start["config"] == {**TOY_DEFAULTS, "steps": 0}
    assert start["tv"]["loss"].shape == (1,)
    # the frozen student refuses with base_refusal everywhere before training
    assert start["tv"]["refusal_benign"][0] == pytest.approx(0.01, rel=1e-12)
    assert start["kl"]["refusal_harmful"][0] == pytest.approx(0.01, rel=1e-12)
    # no harmful prompt at all: the harmful rates are nan (not an error), the benign ones are numbers
    benign_only = th.toy_overrefusal_experiment(n_prompts=4, harmful_fraction=0.0, steps=1)
    assert (
        math.isnan(benign_only["teacher"]["refusal_harmful"])
        and np.isnan(benign_only["tv"]["refusal_harmful"]).all()
    )
    assert (
        0 < benign_only["teacher"]["refusal_benign"] < 1
        and np.isfinite(benign_only["tv"]["refusal_benign"]).all()
    )
    harmful_only = th.toy_overrefusal_experiment(n_prompts=4, harmful_fraction=1.0, steps=1)
    assert (
        math.isnan(harmful_only["teacher"]["refusal_benign"])
        and np.isnan(harmful_only["kl"]["refusal_benign"]).all()
    )
    assert harmful_only["teacher"]["harmful"].all()


def _sequence_probs(tables, V: int, T: int) -> dict[tuple[int, ...], float]:
    """P(sequence) for every sequence of length T, multiplied out token by token."""
    return {
        seq: math.prod(float(tables[seq[:t]][seq[t]]) for t in range(T))
        for seq in itertools.product(range(V), repeat=T)
    }


def test_random_sequence_checks_against_brute_force():
    V, T, seed = 2, 3, 4
    res = th.random_sequence_checks(n_pairs=4, V=V, T=T, seed=seed)
    assert sorted(res) == sorted(
        ["tv_seq", "tv_bound", "kl_seq", "kl_sum", "max_sequence_bound_violation", "kl_chain_rule_error"]
    )
    rng = np.random.default_rng(seed)
    for i in range(4):
        # P: Dirichlet(0.5) conditionals; Q = (1 - e) P + e R per conditional, R independent, e ~ U(0, 1)
        p = th.random_conditional_tables(V, T, seed=seed + i, concentration=0.5)
        r = th.random_conditional_tables(V, T, seed=seed + 100_000 + i, concentration=0.5)
        e = rng.uniform()
        q = {prefix: (1 - e) * p[prefix] + e * r[prefix] for prefix in p}
        P, Q = _sequence_probs(p, V, T), _sequence_probs(q, V, T)
        tv = 0.5 * sum(abs(P[s] - Q[s]) for s in P)
        kl = sum(P[s] * math.log(P[s] / Q[s]) for s in P if P[s] > 0)
        bound = 0.0
        for t in range(T):
            for prefix in itertools.product(range(V), repeat=t):
                weight = math.prod(float(p[prefix[:s]][prefix[s]]) for s in range(t))
                bound += weight * 0.5 * float(np.abs(p[prefix] - q[prefix]).sum())
        assert res["tv_seq"][i] == pytest.approx(tv, abs=1e-13)
        assert res["kl_seq"][i] == pytest.approx(kl, rel=1e-10, abs=1e-13)
        assert res["kl_sum"][i] == pytest.approx(kl, rel=1e-10, abs=1e-13)  # the chain rule
        assert res["tv_bound"][i] == pytest.approx(bound, abs=1e-13)
    assert res["max_sequence_bound_violation"] == pytest.approx(
        float((res["tv_seq"] - res["tv_bound"]).max()), abs=0
    )
    assert res["max_sequence_bound_violation"] <= 1e-12
    assert res["kl_chain_rule_error"] == float(np.abs(res["kl_seq"] - res["kl_sum"]).max()) <= 1e-12
    assert res["tv_seq"].shape == res["tv_bound"].shape == res["kl_seq"].shape == res["kl_sum"].shape == (4,)
    # the defaults: V = 3, T = 4, seed 0
    one = th.random_sequence_checks(n_pairs=1)
    np.testing.assert_array_equal(one["tv_seq"], th.random_sequence_checks(1, V=3, T=4, seed=0)["tv_seq"])


def test_float32_tensors_are_computed_in_float64():
    p = torch.tensor([0.1, 0.9], dtype=torch.float32)
    q = torch.tensor([0.3, 0.7], dtype=torch.float32)
    out = th.tv_distance(p, q)
    assert out.dtype == torch.float64
    assert float(out) == 0.5 * (abs(float(p[0]) - float(q[0])) + abs(float(p[1]) - float(q[1])))
    assert th.kl_divergence(p, q).dtype == torch.float64
    assert th.expectation_gap(p, q, torch.tensor([1.0, 0.0])).dtype == torch.float64


def test_expected_disp_loss_names_the_outcome_count_for_a_single_row():
    with _raises("student_log_probs needs K + 1 = 3 outcomes, got 2"):
        th.expected_disp_loss(np.log([0.5, 0.5]), [0.5, 0.5], [0.5, 0.5])
    one_row = th.expected_disp_loss(np.log([0.25, 0.25, 0.5]), [0.5, 0.5], [0.5, 0.5])
    assert one_row.shape == ()


def test_toy_experiment_clips_jittered_alphas_into_the_open_unit_interval():
    # alpha_safe + jitter can exceed 1 and alpha_unsafe - jitter fall below 0: clipped to [0.001, 0.999]
    kw = dict(n_prompts=8, n_responses=4, alpha_unsafe=0.02, alpha_safe=0.99, steps=2, seed=5)
    res, ref = th.toy_overrefusal_experiment(**kw), _toy_reference(**kw)
    np.testing.assert_allclose(
        res["teacher"]["distribution"], ref["teacher"]["distribution"], rtol=1e-13, atol=1e-15
    )
    for name in ("tv", "kl"):
        np.testing.assert_allclose(res[name]["loss"], ref[name]["loss"], rtol=1e-10)


def test_minimise_expected_loss_finds_the_teacher_for_kl_and_the_clipped_optimum_for_tv():
    base, alpha = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    teacher = th.safe_system_distribution(base, alpha).numpy()
    np.testing.assert_allclose(th.minimise_expected_loss(base, alpha, "kl", steps=2000), teacher, atol=2e-3)
    # TV: a weighted NLL on the atoms still below their clip -> (0.45, 0.05, 0.45) / 0.95 (notebook 01, 6.3)
    q_tv = th.minimise_expected_loss(base, alpha, "tv", steps=2000)
    np.testing.assert_allclose(q_tv, np.array([0.45, 0.05, 0.45]) / 0.95, atol=2e-3)
    assert q_tv[2] < teacher[2]  # less refusal than the teacher
    with pytest.raises(ValueError, match="loss must be one of"):
        th.minimise_expected_loss(base, alpha, "hinge")
    with pytest.raises(ValueError, match="steps"):
        th.minimise_expected_loss(base, alpha, steps=0)
