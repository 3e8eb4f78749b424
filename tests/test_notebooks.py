"""Every notebook runs headlessly through papermill in smoke mode; we assert on the numbers it emits."""

from __future__ import annotations

import os

import pytest

from dispsafe_nb.notebooks.outputs import load_metrics
from dispsafe_nb.notebooks.reproduce import notebooks, run_notebook
from dispsafe_nb.report.claims import run_claims
from dispsafe_nb.report.notebook_checks import NOTEBOOK_CHECKS, failures

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

# The slowest smoke cell takes about two minutes on 2 cores; a cell past this limit is a hung kernel, which then
# fails its test instead of holding the suite until CI's limit.
CELL_TIMEOUT_S = 600

# What each notebook must show is a list of named checks in dispsafe_nb.report.notebook_checks, each naming the failures it guards
# against; tests/test_sabotage.py shows every one of them failing under those failures. A notebook without checks
# fails the suite: every notebook must be asserted on.


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    out = tmp_path_factory.mktemp("notebooks")
    old = {k: os.environ.get(k) for k in ("DISPSAFE_RESULTS", "DISPSAFE_FIGURES")}
    os.environ["DISPSAFE_RESULTS"] = str(out / "results")
    os.environ["DISPSAFE_FIGURES"] = str(out / "figures")
    yield out
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_every_notebook_has_a_check():
    names = {p.stem for p in notebooks()}
    assert names, "no notebooks found"
    assert names <= set(NOTEBOOK_CHECKS), f"notebooks without checks: {sorted(names - set(NOTEBOOK_CHECKS))}"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, smoke_env):
    run_notebook(path, smoke_env / "executed", {"SMOKE": True}, cell_timeout_s=CELL_TIMEOUT_S)
    record = load_metrics(path.stem)
    assert record["config"].get("SMOKE") is True, "the notebook must record its parameters in its config"
    failed = failures(path.stem, record["metrics"])
    assert not failed, "\n".join(failed)
    # the findings are judged on full runs only (`make reproduce`), but every metric they need must be emitted
    unjudgeable = [
        m for _, m in run_claims(path.stem, record["metrics"]).values() if "missing or malformed" in m
    ]
    assert not unjudgeable, "\n".join(unjudgeable)
    assert list((smoke_env / "figures").glob(f"{path.stem[:2]}_*.html")), "the notebook saved no figure"
