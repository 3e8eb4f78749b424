"""Small, dependency-free classification metrics used by guards and evaluation, and agreement between judges."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[int | bool] | torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties count 1/2.

    Computed from average ranks (Mann-Whitney U), so it is exact and O(n log n).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    if s.numel() != y.numel():
        raise ValueError(f"{s.numel()} scores but {y.numel()} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    # average rank within ties
    i = 0
    n = s.numel()
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = positions[i : j + 1].mean()
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def binary_report(
    scores: Sequence[float] | torch.Tensor,
    labels: Sequence[int | bool] | torch.Tensor,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Accuracy, AUROC (when both classes occur), true/false positive rates at a threshold."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    pred = s >= threshold
    report: dict[str, float] = {"n": int(y.numel()), "accuracy": float((pred == y).double().mean())}
    if y.any():
        report["tpr"] = float(pred[y].double().mean())
    if (~y).any():
        report["fpr"] = float(pred[~y].double().mean())
    if y.any() and (~y).any():
        report["auroc"] = auroc(s, y)
    return report


def _binary_labels(labels: Sequence[int | bool] | torch.Tensor, name: str) -> list[int]:
    values = labels.flatten().tolist() if isinstance(labels, torch.Tensor) else list(labels)
    bad = [v for v in values if v not in (0, 1)]
    if bad:
        raise ValueError(f"{name} must hold binary labels (0/1 or bools); found {bad[0]!r}")
    return [int(v) for v in values]


def cohen_kappa(a: Sequence[int | bool] | torch.Tensor, b: Sequence[int | bool] | torch.Tensor) -> float:
    """Cohen's κ between two binary label sequences: (p_o − p_e) / (1 − p_e), where p_o is the raw agreement and
    p_e = P(a=1)·P(b=1) + P(a=0)·P(b=0) the agreement expected by chance from each side's label rates.

    Degenerate case: when chance agreement is 1 the ratio is 0/0. Then κ is 1.0 if the labels agree perfectly and
    0.0 otherwise. For binary labels p_e = 1 happens only when both sequences are one and the same constant, so
    this returns 1.0 there; the 0.0 branch only guards against such input reaching the division.
    """
    x, y = _binary_labels(a, "a"), _binary_labels(b, "b")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} labels in a but {len(y)} in b")
    if not x:
        raise ValueError("Cohen's kappa needs at least one pair of labels")
    n = len(x)
    p_o = sum(i == j for i, j in zip(x, y, strict=True)) / n
    rate_a, rate_b = sum(x) / n, sum(y) / n
    p_e = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    if p_e >= 1.0:
        return 1.0 if p_o == 1.0 else 0.0
    return (p_o - p_e) / (1 - p_e)


def binary_agreement(
    a: Sequence[int | bool] | torch.Tensor, b: Sequence[int | bool] | torch.Tensor
) -> dict[str, float | int]:
    """Agreement between two judges' binary labels on the same items: {"kappa" (Cohen's κ), "agreement" (the
    fraction of items labelled alike), "n", "rate_a", "rate_b" (each judge's fraction of positive labels)}."""
    x, y = _binary_labels(a, "a"), _binary_labels(b, "b")
    kappa = cohen_kappa(x, y)  # also checks lengths and emptiness
    n = len(x)
    return {
        "kappa": kappa,
        "agreement": sum(i == j for i, j in zip(x, y, strict=True)) / n,
        "n": n,
        "rate_a": sum(x) / n,
        "rate_b": sum(y) / n,
    }
