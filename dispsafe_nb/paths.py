"""Where the project keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = REPO_ROOT / "figures"
RESULTS_DIR = REPO_ROOT / "results"


def cache_root() -> Path:
    """Root of everything computed and reusable: ``$DISPSAFE_CACHE`` (default ``~/.cache/dispsafe``)."""
    return Path(os.environ.get("DISPSAFE_CACHE") or Path.home() / ".cache" / "dispsafe").expanduser()
