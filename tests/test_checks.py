"""Checks and claims on hand-made metrics: what each reads, and how a missing metric is reported."""

from __future__ import annotations

import time

import pytest

from dispsafe_nb.report import claims
from dispsafe_nb.report import notebook_checks as checks


def _eval(over_refusal_kl: float, over_refusal_tv: float) -> dict:
    def system(sgs, over, comp):
        return {
            "advbench_test": {"sgs": sgs},
            "xstest_safe": {"over_refusal": over},
            "alpaca_test": {"compliance": comp},
        }

    return {
        "base": system(0.05, 0.02, 1.0),
        "dual": system(0.85, 0.06, 0.96),
        "tv-disp": system(0.80, over_refusal_tv, 0.95),
        "kl-disp": system(0.80, over_refusal_kl, 0.95),
    }


def test_a_claim_reports_whether_it_reproduced():
    found = claims.run_claims("03_distill", _eval(0.20, 0.10))
    assert found["kl_over_refuses_more_than_tv"][0] is True
    assert found["students_reach_the_dual_system"][0] is True  # 0.80 >= 0.9 * 0.85
    flipped = claims.run_claims("03_distill", _eval(0.10, 0.20))
    assert flipped["kl_over_refuses_more_than_tv"][0] is False
    assert "XSTest" in flipped["kl_over_refuses_more_than_tv"][1]


def test_a_missing_metric_is_reported_not_raised():
    ok, message = claims.run_claims("01_tv_bound", {})["toy_kl_over_refuses"]
    assert not ok and "missing" in message
    assert claims.run_claims("99_unknown", {}) == {}


def test_every_notebook_with_checks_states_its_findings_as_claims():
    assert set(claims.NOTEBOOK_CLAIMS) == set(checks.NOTEBOOK_CHECKS)
    names = [c.name for stated in claims.NOTEBOOK_CLAIMS.values() for c in stated]
    assert len(names) == len(set(names))


def test_reproduce_reports_checks_always_and_claims_on_full_runs_only(monkeypatch, tmp_path, capsys):
    from dispsafe_nb.notebooks import reproduce

    monkeypatch.setenv("DISPSAFE_RESULTS", str(tmp_path))
    monkeypatch.setattr(reproduce, "run_notebook", lambda path, out, params: tmp_path / path.name)
    monkeypatch.setattr(reproduce, "render_html", lambda executed: executed.with_suffix(".html"))
    monkeypatch.setattr(reproduce, "load_metrics", lambda name: {"metrics": _eval(0.10, 0.20), "config": {}})
    assert reproduce.main(["03_distill"]) == 0
    full = capsys.readouterr().out
    assert "NOT reproduced in this run: kl_over_refuses_more_than_tv" in full
    assert "reproduced: students_safer_than_base" in full
    assert "prompt_moved: metric missing" in full  # a check whose metric the run did not emit
    assert "03_distill finished in" in full and "1 notebook(s) in" in full  # wall time as soon as it finishes
    assert reproduce.main(["--smoke", "03_distill"]) == 0
    assert "kl_over_refuses_more_than_tv" not in capsys.readouterr().out.split("Summary")[0]


def test_a_notebook_runs_with_a_cell_progress_bar_named_after_it(monkeypatch, tmp_path):
    import papermill

    from dispsafe_nb.notebooks import reproduce

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, **kw: seen.update(kw))
    reproduce.run_notebook(reproduce.notebooks()[0], tmp_path)
    assert (
        seen["progress_bar"]["desc"] == reproduce.notebooks()[0].stem
        and seen["progress_bar"]["unit"] == "cell"
    )
    assert seen["execution_timeout"] is None  # full runs: cells that train for hours are not cut
    reproduce.run_notebook(reproduce.notebooks()[0], tmp_path, progress=False)
    assert seen["progress_bar"] is False


def test_a_hung_cell_fails_its_notebook_within_the_cell_timeout(tmp_path):
    import nbformat

    from dispsafe_nb.notebooks import reproduce

    hung = tmp_path / "hung.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(600)")]
    nbformat.write(nb, hung)
    start = time.monotonic()
    with pytest.raises(Exception, match="(?i)timed? ?out"):
        reproduce.run_notebook(hung, tmp_path / "out", cell_timeout_s=3, progress=False)
    assert time.monotonic() - start < 120
