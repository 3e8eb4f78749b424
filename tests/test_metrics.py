"""Cohen's kappa and judge agreement (`dispsafe_nb.metrics`)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from dispsafe_nb.metrics import cohen_kappa, judge_agreement


def _table(a: list[int], b: list[int]) -> tuple[int, int, int, int]:
    """The 2×2 table: (both 1, a 1 b 0, a 0 b 1, both 0)."""
    pairs = list(zip(a, b, strict=True))
    return pairs.count((1, 1)), pairs.count((1, 0)), pairs.count((0, 1)), pairs.count((0, 0))


def _kappa_closed_form(a: list[int], b: list[int]) -> float | None:
    """κ = 2(ad − bc) / ((a+b)(b+d) + (a+c)(c+d)) for a 2×2 table; None where it is 0/0."""
    n11, n10, n01, n00 = _table(a, b)
    denominator = (n11 + n10) * (n10 + n00) + (n11 + n01) * (n01 + n00)
    return None if denominator == 0 else 2 * (n11 * n00 - n10 * n01) / denominator


def test_hand_computed_example():
    # 50 items: 20 both yes, 5 a-only, 10 b-only, 15 both no.
    # p_o = 35/50 = 0.7; P(a=1) = 0.5, P(b=1) = 0.6; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; κ = 0.2/0.5 = 0.4
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert judge_agreement(a, b) == pytest.approx(
        {"kappa": 0.4, "agreement": 0.7, "n": 50, "rate_a": 0.5, "rate_b": 0.6}
    )


def test_small_hand_values():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    # p_o = 3/4, p_e = 1/2 -> 0.5
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    # one judge constant, the other not: p_e = p_o, κ = 0
    assert cohen_kappa([1, 1, 1, 1], [1, 1, 0, 1]) == 0.0


def test_matches_the_closed_form_on_every_pair_of_short_sequences():
    for n in range(1, 6):
        for a in itertools.product((0, 1), repeat=n):
            for b in itertools.product((0, 1), repeat=n):
                expected = _kappa_closed_form(list(a), list(b))
                got = cohen_kappa(a, b)
                if expected is None:  # only when both are the same constant: the degenerate case
                    assert len(set(a)) == 1 and a == b
                    assert got == 1.0
                else:
                    assert got == pytest.approx(expected, abs=1e-12), (a, b)


def test_matches_the_closed_form_on_random_long_sequences():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 300)
        p, q = rng.random(), rng.random()
        a = [int(rng.random() < p) for _ in range(n)]
        b = [int(rng.random() < q) if rng.random() < 0.5 else x for x in a]
        expected = _kappa_closed_form(a, b)
        if expected is not None:
            assert cohen_kappa(a, b) == pytest.approx(expected, abs=1e-12)
            assert cohen_kappa(b, a) == pytest.approx(cohen_kappa(a, b), abs=1e-12)


@pytest.mark.parametrize("value", [0, 1])
def test_degenerate_chance_agreement_of_one(value):
    same = [value] * 7
    assert cohen_kappa(same, same) == 1.0
    assert judge_agreement(same, same)["kappa"] == 1.0


def test_accepts_bools_and_tensors():
    a = [True, False, True, True]
    b = torch.tensor([1, 0, 0, 1])
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa([1, 0, 1, 1], [1, 0, 0, 1]))
    assert cohen_kappa(torch.tensor(a), b) == pytest.approx(0.5)


def test_agreement_reports_raw_agreement_and_n():
    report = judge_agreement([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert report["agreement"] == pytest.approx(3 / 5) and report["n"] == 5
    assert (report["rate_a"], report["rate_b"]) == (pytest.approx(0.6), pytest.approx(0.6))
    # p_e = 0.6*0.6 + 0.4*0.4 = 0.52; κ = (0.6 - 0.52)/0.48
    assert report["kappa"] == pytest.approx(0.08 / 0.48)


@pytest.mark.parametrize(
    "a, b, message",
    [
        ([1, 0], [1], "2 labels in a but 1 in b"),
        ([], [], "at least one pair"),
        ([1, 2], [1, 0], "binary labels"),
        ([1, 0], [0.5, 1], "binary labels"),
    ],
)
def test_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        cohen_kappa(a, b)
    with pytest.raises(ValueError, match=message):
        judge_agreement(a, b)
