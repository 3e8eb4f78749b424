"""Colours and small helpers shared by every figure."""

from __future__ import annotations

from typing import Any

import numpy as np

# One colour per concept, shared by every figure.
COLORS = {
    "tv": "#1f77b4",
    "kl": "#d62728",
    "teacher": "#555555",
    "bound": "#2ca02c",
    "pinsker": "#ff7f0e",
    "bh": "#9467bd",
}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def as_np(x: Any) -> np.ndarray:
    """Plain float64 numpy array from lists, numpy arrays or (detached) torch tensors."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points (all of them if n <= max_points)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


# One colour per system, shared by the evaluation and probing figures.
SYSTEM_COLORS = {"base": "#d62728", "dual": "#1f77b4", "tv-disp": "#2ca02c", "kl-disp": "#9467bd"}
