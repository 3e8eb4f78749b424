"""Where the project keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES_DIR = REPO_ROOT / "figures"
RESULTS_DIR = REPO_ROOT / "results"


def cache_root() -> Path:
    """Root of everything computed and reusable: ``$DISPSAFE_CACHE`` (default ``~/.cache/dispsafe``)."""
    return Path(os.environ.get("DISPSAFE_CACHE") or Path.home() / ".cache" / "dispsafe").expanduser()


def results_dir() -> Path:
    """Where notebooks write their numbers: ``$DISPSAFE_RESULTS`` (tests point it at a temp folder) or results/."""
    return Path(os.environ.get("DISPSAFE_RESULTS") or RESULTS_DIR)


def figures_dir() -> Path:
    """Where figures go: ``$DISPSAFE_FIGURES`` or figures/."""
    return Path(os.environ.get("DISPSAFE_FIGURES") or FIGURES_DIR)
