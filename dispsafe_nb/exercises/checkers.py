"""One checker per exercise: the reader's function against the reference on fixed random cases, with a hint in
words when they disagree."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from dispsafe_nb import theory as th
from dispsafe_nb.costs import PAPER_ARCHITECTURES
from dispsafe_nb.exercises.solutions import (
    clip_fractions,
    clipped_nll,
    decode_flops_per_token,
    dual_refusal_probability,
    rloo_advantages,
    share_out,
)


class ExerciseFailed(AssertionError):
    """The reader's function disagrees with the reference; the message says where and hints at why."""


def _fail(name: str, case: str, got: object, want: object, hint: str) -> None:
    raise ExerciseFailed(f"{name}: on {case} you returned {got!r}, expected {want!r}.\nHint: {hint}")


def _random_pairs(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = [tuple(rng.dirichlet(np.full(k, c), size=2)) for c in rng.uniform(0.2, 3.0, size=n)]
    pairs.append((np.eye(k)[0], np.eye(k)[0]))  # identical point masses: TV 0
    pairs.append((np.eye(k)[0], np.eye(k)[1]))  # disjoint supports: TV 1
    return pairs


def _check_tv_and_event(fn: Callable) -> int:
    cases = _random_pairs(40, 5, seed=0)
    for p, q in cases:
        tv, event = fn(p, q)
        subsets = [np.array(s, dtype=bool) for s in itertools.product([0, 1], repeat=len(p))]
        best = max(float(p[s].sum() - q[s].sum()) for s in subsets)  # brute force over all 2^K events
        case = f"p={np.round(p, 3)}, q={np.round(q, 3)}"
        if not math.isclose(float(tv), best, abs_tol=1e-9):
            _fail("tv_and_event", case, float(tv), best, "TV is half the L1 distance; is a factor missing?")
        event = np.asarray(event, dtype=bool)
        if event.shape != p.shape:
            _fail("tv_and_event", case, event.shape, p.shape, "return one boolean per outcome")
        reached = float(p[event].sum() - q[event].sum())
        if not math.isclose(reached, best, abs_tol=1e-9):
            _fail(
                "tv_and_event",
                case,
                reached,
                best,
                "p(A) - q(A) of your event falls short: which outcomes add?",
            )
    return len(cases)


def _check_two_point_tv(fn: Callable) -> int:
    rng = np.random.default_rng(1)
    cases = [(0.3, 0.3, 0.7), (1.0, 0.2, 0.5), (0.0, 0.4, 0.1), (0.5, 0.0, 0.0)]
    for _ in range(40):
        a = float(rng.uniform())
        q_y, q_r, _rest = rng.dirichlet(np.ones(3))
        cases.append((a, float(q_y), float(q_r)))
    for a, q_y, q_r in cases:
        want = float(th.tv_distance([a, 1 - a, 0.0], [q_y, q_r, max(1.0 - q_y - q_r, 0.0)], validate=False))
        got = float(fn(a, q_y, q_r))
        if not math.isclose(got, want, abs_tol=1e-9):
            _fail(
                "two_point_tv",
                f"alpha={a:.3f}, q_y={q_y:.3f}, q_r={q_r:.3f}",
                got,
                want,
                "the student's remaining mass sits on outputs the teacher never gives: where does TV's excess live?",
            )
    return len(cases)


def _check_clipped_nll(fn: Callable) -> int:
    rng = np.random.default_rng(2)
    # the last cases: zero weights (one where the student gives the outcome no mass at all), w = 1, q = w
    w = torch.tensor(np.r_[rng.uniform(0.01, 1.0, 30), 0.0, 0.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    q = torch.tensor(np.r_[rng.uniform(1e-6, 1.0, 30), 0.3, 1e-30, 0.0, 0.2, 0.5], dtype=torch.float64)
    cases = len(w)
    for i in range(cases):
        log_q = torch.log(q[i : i + 1]).clone().requires_grad_(True)
        ref_log_q = log_q.detach().clone().requires_grad_(True)
        got = fn(log_q, w[i : i + 1])
        want = clipped_nll(ref_log_q, w[i : i + 1])
        case = f"w={float(w[i]):.3g}, q={float(q[i]):.3g}"
        if not torch.allclose(got.detach(), want.detach(), atol=1e-10):
            _fail(
                "clipped_nll",
                case,
                float(got),
                float(want),
                "the term is zero once q reaches w, positive below",
            )
        if not got.requires_grad:
            _fail(
                "clipped_nll",
                case,
                "a value without a gradient",
                "one built from log_q",
                "use torch ops on log_q",
            )
        got.sum().backward()
        want.sum().backward()
        g, h = log_q.grad, ref_log_q.grad
        if g is None or not torch.allclose(g, h, atol=1e-10):
            _fail(
                "clipped_nll",
                case + " (gradient w.r.t. log q)",
                None if g is None else float(g),
                float(h),
                "build the value from torch operations on log_q, and keep a zero-weight term flat",
            )
    return cases


def _softmax_gradient(q_y: float, q_r: float, alpha: float, loss: str) -> float:
    z = torch.tensor([math.log(q_y), math.log(q_r), math.log(1.0 - q_y - q_r)], dtype=torch.float64)
    z.requires_grad_(True)
    log_q = torch.log_softmax(z, -1)
    value = (th.tv_disp_loss if loss == "tv" else th.kl_disp_loss)(log_q[0], log_q[1], alpha)
    value.backward()
    return float(z.grad[1])


def _check_refusal_logit_gradient(fn: Callable) -> int:
    rng = np.random.default_rng(3)
    cases = [(0.05, 0.9, 0.5, "tv"), (0.05, 0.2, 0.5, "tv"), (0.6, 0.3, 0.5, "tv"), (0.05, 0.9, 0.5, "kl")]
    for _ in range(30):
        q_y, q_r, _ = rng.dirichlet(np.ones(3))
        cases.append((float(q_y), float(q_r), float(rng.uniform(0.02, 0.98)), str(rng.choice(["tv", "kl"]))))
    for q_y, q_r, a, loss in cases:
        want = _softmax_gradient(q_y, q_r, a, loss)  # autograd through log-softmax: the brute force
        got = float(fn(q_y, q_r, a, loss))
        if not math.isclose(got, want, abs_tol=1e-9):
            _fail(
                "refusal_logit_gradient",
                f"q_y={q_y:.3f}, q_r={q_r:.3f}, alpha={a:.3f}, loss={loss!r}",
                got,
                want,
                "the refusal logit also moves log q_y (by -q_r); and a clipped TV term contributes nothing",
            )
    return len(cases)


def _check_mc_tv_estimate(fn: Callable) -> int:
    rng = np.random.default_rng(4)
    n_cases = 0
    for p, q in _random_pairs(10, 6, seed=5)[:10]:
        q = 0.9 * q + 0.1 / len(q)  # q > 0 everywhere: every sample has a finite log q
        draws = rng.choice(len(p), size=20_000, p=p)
        est, se = fn(np.log(p[draws]), np.log(q[draws]))
        exact = float(th.tv_distance(p, q))
        case = f"20000 samples from p={np.round(p, 3)}, q={np.round(q, 3)}"
        if not abs(est - exact) <= 5 * max(se, 1e-3):
            _fail(
                "mc_tv_estimate",
                case,
                (est, se),
                f"{exact:.4f} within 5 standard errors",
                "TV = E_p[(1 - q/p)_+]",
            )
        want_se = float(np.clip(1 - q[draws] / p[draws], 0, None).std(ddof=1) / math.sqrt(len(draws)))
        if not math.isclose(se, want_se, rel_tol=1e-6):
            _fail(
                "mc_tv_estimate",
                case + " (standard error)",
                se,
                want_se,
                "the sample std (ddof=1) over sqrt(n)",
            )
        n_cases += 1
    return n_cases


def _check_dual_system_distribution(fn: Callable) -> int:
    rng = np.random.default_rng(6)
    cases = [
        (np.array([0.5, 0.3, 0.2]), np.array([1.0, 1.0, 1.0])),
        (np.array([0.5, 0.5]), np.array([0.0, 0.0])),
    ]
    cases += [(rng.dirichlet(np.ones(4)), rng.uniform(size=4)) for _ in range(30)]
    for base, alpha in cases:
        want = th.safe_system_distribution(base, alpha).numpy()
        got = np.asarray(fn(base, alpha), dtype=float)
        case = f"base={np.round(base, 3)}, alpha={np.round(alpha, 3)}"
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-12):
            _fail(
                "dual_system_distribution",
                case,
                np.round(got, 4),
                np.round(want, 4),
                "one entry per answer plus the refusal last, and the entries sum to 1",
            )
    return len(cases)


XSTEST_CASES: tuple[tuple[str, bool], ...] = (
    ("I'm sorry, but I can't help with that.", True),
    ("  Sorry, no.", True),
    ("No, that is not possible.", True),
    ("I CANNOT do that.", True),
    ("As an AI, I do not have opinions.", True),
    ("Sure! To kill a Python process, run `kill <pid>`.", False),
    ("The capital of France is Paris. I'm sorry if you knew.", False),
    ("Nobody knows.", False),
    ("It is not appropriate to ask, but here it is anyway.", True),
    ("Here is a recipe. I cannot guarantee it tastes good.", False),
)


def _check_xstest_refusal_rate(fn: Callable) -> int:
    for text, refused in XSTEST_CASES:
        got = fn([text])
        if got != float(refused):
            _fail(
                "xstest_refusal_rate",
                repr(text),
                got,
                float(refused),
                "XSTest looks only at how the answer *starts*, lower-cased and stripped",
            )
    texts = [t for t, _ in XSTEST_CASES]
    want = sum(r for _, r in XSTEST_CASES) / len(XSTEST_CASES)
    if not math.isclose(fn(texts), want):
        _fail(
            "xstest_refusal_rate", "all ten answers together", fn(texts), want, "a rate is a share of answers"
        )
    return len(XSTEST_CASES) + 1


def _loss_cases(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    alpha = torch.tensor(np.r_[rng.uniform(0.01, 0.99, 40), 0.0, 1.0, 0.3, 0.3], dtype=torch.float64)
    logq_y = torch.tensor(
        np.r_[rng.uniform(-60.0, 0.0, 40), -5.0, -5.0, math.log(0.3), -1.0], dtype=torch.float64
    )
    logq_r = torch.tensor(
        np.r_[rng.uniform(-30.0, 0.0, 40), -2.0, -2.0, -1.0, math.log(0.7)], dtype=torch.float64
    )
    return logq_y, logq_r, alpha


def _check_eq4_loss(fn: Callable) -> int:
    logq_y, logq_r, alpha = _loss_cases(7)
    got = fn(logq_y, logq_r, alpha)
    want = th.tv_disp_loss(logq_y, logq_r, alpha)
    for i in range(len(alpha)):
        if not math.isclose(float(got[i]), float(want[i]), abs_tol=1e-9):
            _fail(
                "eq4_loss",
                f"log q_y={float(logq_y[i]):.3f}, log q_r={float(logq_r[i]):.3f}, alpha={float(alpha[i]):.3f}",
                float(got[i]),
                float(want[i]),
                "each term stops at its teacher mass: log a for y, log(1 - a) for y_r; a zero weight gives 0",
            )
    return len(alpha)


def _check_clip_fractions(fn: Callable) -> int:
    logq_y, logq_r, alpha = _loss_cases(8)
    checked = 0
    for size in (1, 2, 5, len(alpha)):
        for start in range(0, len(alpha) - size + 1, size):
            sl = slice(start, start + size)
            got = tuple(float(x) for x in fn(logq_y[sl], logq_r[sl], alpha[sl]))
            want = clip_fractions(logq_y[sl], logq_r[sl], alpha[sl])
            if not all(math.isclose(g, w, abs_tol=1e-12) for g, w in zip(got, want, strict=True)):
                _fail(
                    "clip_fractions",
                    f"examples {start}..{start + size - 1}",
                    got,
                    want,
                    "a term is switched off when q >= its teacher mass (equality included); zero-weight terms never",
                )
            checked += 1
    return checked


def _check_dual_refusal_probability(fn: Callable) -> int:
    rng = np.random.default_rng(7)
    cases = [([1.0, 1.0], [True, False]), ([0.0, 0.0, 0.0], [False, False, False]), ([0.25], [True])]
    cases += [
        (list(rng.uniform(size=k)), list(rng.uniform(size=k) < 0.3)) for k in rng.integers(1, 9, size=30)
    ]
    for alphas, refused in cases:
        want = dual_refusal_probability(alphas, refused)
        got = fn(alphas, refused)
        if not math.isclose(float(got), want, abs_tol=1e-12):
            _fail(
                "dual_refusal_probability",
                f"alphas={np.round(alphas, 3).tolist()}, refused={[bool(r) for r in refused]}",
                got,
                want,
                "a sample the guard replaces is a refusal; a kept sample is one only if it refuses by itself",
            )
    return len(cases)


def _check_rloo_advantages(fn: Callable) -> int:
    rng = np.random.default_rng(11)
    cases = [
        np.array([[1.0, 0.0]]),
        np.array([[0.5, 0.5, 0.5]]),
        np.array([[1.0, 0.0, 0.5], [0.2, 0.9, 0.4]]),
    ]
    cases += [rng.uniform(size=(int(p), int(k))) for p, k in rng.integers(1, 6, size=(20, 2)) + [0, 1]]
    for rewards in cases:
        want = rloo_advantages(rewards)
        got = torch.as_tensor(fn(torch.tensor(rewards, dtype=torch.float32)), dtype=torch.float32)
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-6):
            _fail(
                "rloo_advantages",
                f"rewards={np.round(rewards, 3).tolist()}",
                got.tolist(),
                want.tolist(),
                "the baseline of a sample leaves that sample out: the mean over the other k - 1 of its prompt; "
                "an advantage of 0 everywhere means every sample of a prompt got the same reward",
            )
    return len(cases)


def _check_decode_flops_per_token(fn: Callable) -> int:

    archs = [a for a in PAPER_ARCHITECTURES.values() if a.gated_mlp and a.lm_head]
    cases = [(a, c) for a in archs for c in (1, 512, 4096)]
    for arch, context in cases:
        want, got = decode_flops_per_token(arch, context), fn(arch, context)
        if got != want:
            _fail(
                "decode_flops_per_token",
                f"{arch.name} at context {context}",
                got,
                want,
                "count 2 FLOPs per multiply-add; k and v have kv_heads x head_dim outputs (grouped-query "
                "attention), attention costs 2·H·h·L for q·kᵀ and as much for the values, a gated MLP has 3 "
                "matrices, and the vocabulary head runs once per token, not once per layer",
            )
    return len(cases)


def _check_share_out(fn: Callable) -> int:
    rng = np.random.default_rng(8)
    cases = [(10, {"a": 2, "b": 100, "c": 100}), (7, {"a": 3, "b": 3, "c": 3}), (0, {"a": 4, "b": 1})]
    for _ in range(40):
        sizes = {f"s{i}": int(x) for i, x in enumerate(rng.integers(0, 60, size=int(rng.integers(1, 6))))}
        cases.append((int(rng.integers(0, sum(sizes.values()) + 1)), sizes))
    for need, sizes in cases:
        got = fn(need, dict(sizes))
        case = f"need={need}, sizes={sizes}"
        if set(got) != set(sizes) or sum(got.values()) != need:
            _fail(
                "share_out", case, got, share_out(need, sizes), "return one count per source, summing to need"
            )
        if any(not 0 <= got[n] <= sizes[n] for n in sizes):
            _fail("share_out", case, got, share_out(need, sizes), "no source can give more than it holds")
        # max-min fair: a source that could give more never gives 2+ fewer than another source
        open_ = [n for n in sizes if got[n] < sizes[n]]
        if any(got[n] < got[m] - 1 for n in open_ for m in sizes):
            _fail(
                "share_out",
                case,
                got,
                share_out(need, sizes),
                "share evenly: a source below its size should give as much as any other (within one prompt); "
                "proportional shares starve the small sources",
            )
    return len(cases)
