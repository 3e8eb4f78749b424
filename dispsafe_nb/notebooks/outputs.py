"""Small helpers notebooks share: where results and figures go, and how key numbers are emitted for tests."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import dispsafe_nb
from dispsafe_nb.common.paths import figures_dir, results_dir
from dispsafe_nb.report.notebook_checks import run_checks


def emit_metrics(notebook: str, metrics: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write a notebook's key numbers and full config to results/metrics/<notebook>.json (tests assert on it)."""
    folder = results_dir() / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "notebook": notebook,
        "metrics": metrics,
        "config": config,
        "package_version": dispsafe_nb.__version__,
        "python": platform.python_version(),
    }
    path = folder / f"{notebook}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return path


def load_metrics(notebook: str) -> dict[str, Any]:
    """Read what `emit_metrics` wrote."""
    return json.loads((results_dir() / "metrics" / f"{notebook}.json").read_text(encoding="utf-8"))


def save_figure(fig: Any, name: str) -> Path:
    """Save a plotly figure as HTML under figures/. plotly.js is written once beside the figures
    (`include_plotlyjs="directory"`), so the pages work offline without inlining 4 MB into each."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.html"
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def is_interactive() -> bool:
    """True in a live Jupyter session; False in plain Python and in headless runs (the test suite and
    `make reproduce` set DISPSAFE_HEADLESS=1 for papermill), so widgets never wait for a user there."""
    if os.environ.get("DISPSAFE_HEADLESS"):
        return False
    try:
        from IPython import get_ipython  # noqa: PLC0415 (deferred: IPython exists only inside a notebook)

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def config_of(namespace: dict[str, Any], names: str) -> dict[str, Any]:
    """The notebook's parameters as a config dict: `config_of(globals(), "SMOKE STEPS SEED")`. A name that is not
    defined fails, naming it (a renamed parameter must not vanish from the record silently)."""
    missing = [n for n in names.split() if n not in namespace]
    if missing:
        raise NameError(f"parameters {missing} are not defined in this notebook")
    return {n: namespace[n] for n in names.split()}


def emit_and_check(notebook: str, metrics: dict[str, Any], config: dict[str, Any]) -> Path:
    """The end of every notebook: write its metrics (`emit_metrics`) and print each named check as holding or not
    (`dispsafe_nb.report.notebook_checks`); returns the metrics file."""

    path = emit_metrics(notebook, metrics, config)
    for ok, message in run_checks(notebook, metrics).values():
        print(("✓ " if ok else "✗ ") + message)
    return path
