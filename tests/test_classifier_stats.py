"""Cohen's kappa and judge agreement (`dispsafe_nb.common.classifier_stats`)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from dispsafe_nb.common.classifier_stats import auroc, binary_agreement, binary_report, cohen_kappa


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
    assert binary_agreement(a, b) == pytest.approx(
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
    assert binary_agreement(same, same)["kappa"] == 1.0


def test_accepts_bools_and_tensors():
    a = [True, False, True, True]
    b = torch.tensor([1, 0, 0, 1])
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa([1, 0, 1, 1], [1, 0, 0, 1]))
    assert cohen_kappa(torch.tensor(a), b) == pytest.approx(0.5)


def test_agreement_reports_raw_agreement_and_n():
    report = binary_agreement([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
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
        binary_agreement(a, b)


# ----------------------------------------------------------------------------------------------------------
# AUROC and the binary report
# ----------------------------------------------------------------------------------------------------------


def _auroc_brute_force(scores: list[float], labels: list[int]) -> float:
    """P(score of a positive > score of a negative) over every (positive, negative) pair, a tie counting 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed_values():
    # pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, 0.1) win, (0.8, 0.4) win -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0  # perfect separation
    assert auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0  # perfectly wrong
    assert auroc([0.7, 0.7, 0.7], [1, 0, 1]) == 0.5  # all tied: every pair counts 1/2
    # one tie between classes: (0.5, 0.5) counts 1/2, (0.5, 0.2) wins, (0.9, *) wins -> 3.5/4
    assert auroc([0.5, 0.9, 0.5, 0.2], [1, 1, 0, 0]) == 0.875


def test_auroc_matches_brute_force_with_ties():
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(2, 40)
        levels = rng.randint(1, 6)  # few distinct scores: many ties, within and across classes
        scores = [rng.randint(0, levels) / levels for _ in range(n)]
        labels = [rng.randint(0, 1) for _ in range(n)]
        labels[0], labels[1] = 1, 0  # both classes present
        order = list(range(n))
        rng.shuffle(order)
        scores, labels = [scores[i] for i in order], [labels[i] for i in order]
        assert auroc(scores, labels) == pytest.approx(_auroc_brute_force(scores, labels), abs=1e-12), trial


def test_auroc_is_exact_in_float64_and_reads_tensors_of_any_shape():
    # 1e-12 apart: equal in float32, so a float32 AUROC would call this pair a tie (0.5).
    assert auroc([0.5, 0.5 + 1e-12], [0, 1]) == 1.0
    scores = torch.tensor([[0.1, 0.4], [0.35, 0.8]])
    assert auroc(scores, torch.tensor([[0, 0], [1, 1]])) == 0.75  # integer labels, 2-D: flattened
    assert auroc(scores, torch.tensor([[False, False], [True, True]])) == 0.75
    assert auroc(scores.flatten().tolist(), [False, False, True, True]) == 0.75


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match=r"^3 scores but 2 labels$"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    one_class = r"^AUROC needs at least one positive and one negative example$"
    with pytest.raises(ValueError, match=one_class):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=one_class):
        auroc([0.1, 0.2], [0, 0])


def test_binary_report_hand_computed():
    scores = [0.9, 0.6, 0.5, 0.2, 0.7, 0.1]
    labels = [1, 1, 1, 1, 0, 0]
    # threshold 0.5 (default, >=): predictions 1 1 1 0 1 0; tpr 3/4, fpr 1/2, accuracy 4/6
    report = binary_report(scores, labels)
    assert report == {
        "n": 6,
        "accuracy": pytest.approx(4 / 6),
        "tpr": 0.75,
        "fpr": 0.5,
        "auroc": pytest.approx(_auroc_brute_force(scores, labels)),
    }
    assert list(report) == ["n", "accuracy", "tpr", "fpr", "auroc"]
    assert isinstance(report["n"], int)
    # a score equal to the threshold is a positive prediction
    assert binary_report([0.3, 0.2], [1, 0], threshold=0.3) == {
        "n": 2,
        "accuracy": 1.0,
        "tpr": 1.0,
        "fpr": 0.0,
        "auroc": 1.0,
    }
    assert binary_report([0.3, 0.2], [1, 0], threshold=0.31)["tpr"] == 0.0
    high = binary_report(scores, labels, threshold=0.65)  # predictions 1 0 0 0 1 0
    assert (high["tpr"], high["fpr"], high["accuracy"]) == (0.25, 0.5, pytest.approx(2 / 6))


def test_binary_report_with_one_class_has_no_auroc():
    only_pos = binary_report(torch.tensor([[0.9, 0.4]]), torch.tensor([[1, 1]]))
    assert only_pos == {"n": 2, "accuracy": 0.5, "tpr": 0.5}
    only_neg = binary_report([0.9, 0.4, 0.1], [False, False, False])
    assert only_neg == {"n": 3, "accuracy": pytest.approx(2 / 3), "fpr": pytest.approx(1 / 3)}
    # float64 throughout: a score a hair under the threshold is not rounded up to it
    assert binary_report([0.5 - 1e-12], [1])["tpr"] == 0.0


def test_error_messages_name_the_bad_side():
    with pytest.raises(ValueError, match=r"^a must hold binary labels \(0/1 or bools\); found 2$"):
        cohen_kappa([1, 2], [1, 0])
    with pytest.raises(ValueError, match=r"^b must hold binary labels \(0/1 or bools\); found 0\.5$"):
        binary_agreement([1, 0], [0.5, 1])
    with pytest.raises(ValueError, match=r"^a must hold binary labels \(0/1 or bools\); found 3$"):
        binary_agreement(torch.tensor([[1, 3]]), [1, 0])
    with pytest.raises(ValueError, match=r"^b must hold binary labels \(0/1 or bools\); found 7$"):
        cohen_kappa([1, 0], torch.tensor([7, 1]))
    with pytest.raises(ValueError, match=r"^2 labels in a but 1 in b$"):
        binary_agreement([1, 0], [1])
    with pytest.raises(ValueError, match=r"^Cohen's kappa needs at least one pair of labels$"):
        cohen_kappa([], [])
