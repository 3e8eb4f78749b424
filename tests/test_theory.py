"""Brute-force checks of dispsafe_nb.theory: every claim is compared with an independent computation."""

from __future__ import annotations

import itertools
import math

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
