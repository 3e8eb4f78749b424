"""Every exercise's checker accepts its reference solution and rejects plausible wrong answers with a hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dispsafe_nb import exercises as ex
from dispsafe_nb import theory as th
from dispsafe_nb.evaluation.judges import XSTEST_REFUSAL_PREFIXES

# name -> wrong answers a reader might plausibly write (each must be rejected)
WRONG = {
    "tv_and_event": [
        lambda p, q: (float(np.abs(p - q).sum()), p > q),  # the L1 distance, not half of it
        lambda p, q: (float(0.5 * np.abs(p - q).sum()), p < q),  # the event where q has the excess
    ],
    "two_point_tv": [
        lambda a, qy, qr: 0.5 * (abs(a - qy) + abs(1 - a - qr)),  # forgets the student's mass elsewhere
        lambda a, qy, qr: abs(a - qy),  # only the sample's atom
    ],
    "clipped_nll": [
        lambda lq, w: -w * lq,  # no clip
        lambda lq, w: torch.tensor(ex.clipped_nll(lq.detach(), w).numpy()),  # right values, no gradient
        lambda lq, w: w * torch.clamp(torch.log(w) - lq, min=0.0),  # right where w > 0, NaN where w = 0
    ],
    "refusal_logit_gradient": [
        lambda qy, qr, a, loss: -(1 - a) * (1 - qr),  # forgets that z_r also moves log q_y
        lambda qy, qr, a, loss: ex.refusal_logit_gradient(qy, qr, a, "kl"),  # ignores the clip
    ],
    "mc_tv_estimate": [
        lambda lp, lq: (
            float(np.clip(np.exp(lp) - np.exp(lq), 0, None).mean()),
            0.01,
        ),  # not importance-weighted
        lambda lp, lq: (float(np.abs(1 - np.exp(lq - lp)).mean()), 0.01),  # |.| instead of the positive part
    ],
    "dual_system_distribution": [
        lambda b, a: b * a,  # no refusal entry
        lambda b, a: np.append(b * a, (1 - a).sum() / len(a)),  # refusal mass not weighted by the base model
    ],
    "xstest_refusal_rate": [
        lambda rs: (
            sum(any(p in r.lower() for p in XSTEST_REFUSAL_PREFIXES) for r in rs) / len(rs)
        ),  # anywhere
        lambda rs: sum(r.startswith(XSTEST_REFUSAL_PREFIXES) for r in rs) / len(rs),  # case-sensitive
    ],
    "eq4_loss": [
        lambda ly, lr, a: th.kl_disp_loss(ly, lr, a),  # KL-DiSP: no clip
        lambda ly, lr, a: ex.clipped_nll(ly, a) + ex.clipped_nll(lr, a),  # the refusal's weight is 1 - a
    ],
    "dual_refusal_probability": [
        lambda a, r: float(np.mean([1 - x for x in a])),  # forgets samples that refuse by themselves
        lambda a, r: float(np.mean([x * float(f) for x, f in zip(a, r, strict=True)])),  # only kept refusals
        lambda a, r: float(np.mean([float(f) for f in r])),  # the base model's rate: ignores the guard
    ],
    "decode_flops_per_token": [
        # the MLP with two matrices, as in a non-gated transformer
        lambda a, c: ex.decode_flops_per_token(a, c) - 2 * a.layers * a.hidden * a.ffn,
        # k and v with as many heads as q (no grouped-query attention)
        lambda a, c: (
            ex.decode_flops_per_token(a, c) + 4 * a.layers * a.hidden * (a.heads - a.kv_heads) * a.head_dim
        ),
        # attention counted once (only q·kᵀ, not the values)
        lambda a, c: ex.decode_flops_per_token(a, c) - 2 * a.layers * a.heads * a.head_dim * c,
        # the vocabulary head inside every layer
        lambda a, c: ex.decode_flops_per_token(a, c) + (a.layers - 1) * 2 * a.hidden * a.vocab,
    ],
    "share_out": [
        # in proportion to the sources' sizes (the small ones starve)
        lambda need, sizes: _proportional(need, sizes),
        # equal shares, ignoring what a source holds
        lambda need, sizes: {n: need // len(sizes) + (i < need % len(sizes)) for i, n in enumerate(sizes)},
        # everything from the largest source first
        lambda need, sizes: _largest_first(need, sizes),
    ],
    "rloo_advantages": [
        lambda r: r - r.mean(dim=1, keepdim=True),  # the sample's own reward inside its baseline
        lambda r: r - r.mean(),  # one baseline for the whole batch, not per prompt
        lambda r: r,  # no baseline at all
    ],
    "clip_fractions": [
        lambda ly, lr, a: (
            float(((a > 0) & (ly > torch.log(a))).double().mean()),
            float(((a < 1) & (lr > torch.log(1 - a))).double().mean()),
        ),  # strict: misses q exactly at the teacher mass
        lambda ly, lr, a: (
            float((ly >= torch.log(a)).double().mean()),
            float((lr >= torch.log(1 - a)).double().mean()),
        ),
    ],
}


def _proportional(need, sizes):
    total = sum(sizes.values()) or 1
    take = {n: need * s // total for n, s in sizes.items()}
    for n in sorted(sizes, key=sizes.get, reverse=True)[: need - sum(take.values())]:
        take[n] += 1
    return take


def _largest_first(need, sizes):
    take = dict.fromkeys(sizes, 0)
    for n in sorted(sizes, key=sizes.get, reverse=True):
        take[n] = min(sizes[n], need - sum(take.values()))
    return take


def test_every_exercise_has_wrong_answers_to_reject_and_a_notebook():
    assert set(WRONG) == set(ex.EXERCISES)
    counts = {
        nb: len(ex.for_notebook(nb))
        for nb in (
            "01_tv_bound",
            "02_safe_system",
            "03_distill",
            "04_baselines",
            "06_probe",
            "07_on_device",
            "08_generalisation",
        )
    }
    assert counts["01_tv_bound"] >= 3 and counts["02_safe_system"] >= 2 and counts["03_distill"] >= 2, counts
    assert counts["04_baselines"] >= 1 and counts["06_probe"] >= 1 and counts["07_on_device"] >= 1, counts
    assert counts["08_generalisation"] >= 1, counts


@pytest.mark.parametrize("name", list(ex.EXERCISES))
def test_the_checker_accepts_the_reference_solution(name, capsys):
    assert ex.check(name, ex.solution(name)) > 0
    assert f"✓ {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name, index", [(n, i) for n, ws in WRONG.items() for i in range(len(ws))])
def test_the_checker_rejects_a_wrong_answer_with_a_hint(name, index):
    with pytest.raises(ex.ExerciseFailed, match="Hint: "):
        ex.check(name, WRONG[name][index])


def test_an_unwritten_stub_and_a_non_function_get_clear_messages():
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(ex.ExerciseFailed, match="not written yet"):
        ex.check("two_point_tv", stub)
    with pytest.raises(ex.ExerciseFailed, match="pass your function"):
        ex.check("two_point_tv", 0.5)


def test_unknown_names_suggest_the_close_match_and_solutions_are_one_call_away(capsys):
    with pytest.raises(KeyError, match="did you mean 'two_point_tv'"):
        ex.check("two_piont_tv", ex.two_point_tv)
    source = ex.show_solution("eq4_loss")
    assert source.startswith("def eq4_loss") and "def eq4_loss" in capsys.readouterr().out
    assert "alpha" in ex.task("two_point_tv")


def test_tasks_do_not_give_the_answer_away():
    for e in ex.EXERCISES.values():
        body = ex.show_solution(e.name).split('"""')[-1]  # the code after the docstring
        code_lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert not any(line in e.task for line in code_lines if len(line) > 12), e.name
