"""Small, dependency-free classification metrics used by guards and evaluation."""

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
