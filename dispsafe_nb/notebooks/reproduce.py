"""`make reproduce`: run every notebook headlessly with its default (real-study) parameters.

Executed copies (and their HTML renders) go to results/notebooks/, figures to figures/, key numbers to results/metrics/; a short summary
is printed at the end, with each notebook's named checks and, on full runs, its stated findings (`dispsafe_nb.report.notebook_checks`) as reproduced
or not. `python -m dispsafe_nb.notebooks.reproduce --smoke` runs the smoke parameters instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dispsafe_nb.common.paths import REPO_ROOT, results_dir
from dispsafe_nb.notebooks.outputs import load_metrics
from dispsafe_nb.report.claims import run_claims
from dispsafe_nb.report.notebook_checks import NOTEBOOK_CHECKS, run_checks

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The study's notebooks, in order."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(
    path: Path,
    output_dir: Path,
    parameters: dict | None = None,
    *,
    progress: bool = True,
    cell_timeout_s: int | None = None,
) -> Path:
    """Execute one notebook with papermill (cwd = notebooks/, kernel python3); returns the executed copy.
    `progress` shows a bar of the notebook's cells, named after it (off where TQDM_DISABLE is set, as in tests).
    `cell_timeout_s` fails a cell that runs longer (papermill raises, naming the cell): the tests set it so that a
    hung kernel fails one test in minutes instead of holding the suite until CI's limit; full runs leave it None."""
    import papermill  # noqa: PLC0415 (deferred: papermill is needed to run notebooks only)

    os.environ["DISPSAFE_HEADLESS"] = "1"  # widgets and other waits stay off
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    papermill.execute_notebook(
        str(path),
        str(out),
        parameters=parameters or {},
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar={"desc": path.stem, "unit": "cell", "leave": True} if progress else False,
        execution_timeout=cell_timeout_s,
    )
    return out


def render_html(executed: Path) -> Path:
    """An HTML render of an executed notebook beside it (read it in a browser, no Jupyter needed)."""
    from nbconvert import HTMLExporter  # noqa: PLC0415 (deferred: nbconvert is needed to render HTML only)

    body, _ = HTMLExporter().from_filename(str(executed))
    out = executed.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run with SMOKE=True (minutes instead of hours)")
    parser.add_argument("names", nargs="*", help="only notebooks whose file name contains one of these")
    args = parser.parse_args(argv)
    selected = [p for p in notebooks() if not args.names or any(n in p.name for n in args.names)]
    if not selected:
        print(f"no notebooks matched {args.names} in {NOTEBOOKS_DIR}", file=sys.stderr)
        return 1
    summary = {}
    for path in selected:
        started = time.time()
        print(f"== {path.name}", flush=True)
        executed = run_notebook(path, results_dir() / "notebooks", {"SMOKE": True} if args.smoke else {})
        print(f"   {path.stem} finished in {_minutes(time.time() - started)}", flush=True)
        print(f"   executed copy {executed}, rendered {render_html(executed)}", flush=True)
        record = load_metrics(path.stem)
        verdicts = run_checks(path.stem, record["metrics"]) if path.stem in NOTEBOOK_CHECKS else {}
        # findings are about the study's outcome: judged on full runs only (smoke runs are too small to show them)
        claims = {} if args.smoke else run_claims(path.stem, record["metrics"])
        for ok, message in [*verdicts.values(), *claims.values()]:
            print(f"   {'reproduced' if ok else 'NOT reproduced in this run'}: {message}", flush=True)
        summary[path.stem] = {
            "seconds": round(time.time() - started),
            "checks": {name: ok for name, (ok, _) in verdicts.items()},
            "claims": {name: ok for name, (ok, _) in claims.items()},
            **record["metrics"],
        }
    total = sum(entry["seconds"] for entry in summary.values())
    print(
        f"\n{len(summary)} notebook(s) in {_minutes(total)}: "
        + ", ".join(f"{name} {_minutes(entry['seconds'])}" for name, entry in summary.items())
    )
    print("\nSummary (also in results/metrics/):")
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
