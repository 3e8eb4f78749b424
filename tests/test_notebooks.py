"""Every notebook runs headlessly through papermill in smoke mode; we assert on the numbers it emits."""

from __future__ import annotations

import math
import os

import pytest

from dispsafe_nb.notebook import load_metrics
from dispsafe_nb.reproduce import notebooks, run_notebook

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

# What each notebook must emit in smoke mode (name -> check). A notebook without an entry fails the suite:
# every notebook must be asserted on.
CHECKS = {
    "01_tv_bound": lambda m: (
        m["max_bound_violation"] <= 1e-9
        and m["max_pinsker_violation"] <= 1e-9
        and m["max_sequence_bound_violation"] <= 1e-9
        and m["kl_chain_rule_error"] <= 1e-9
        # the real-model check is Monte-Carlo: smoke mode only shows it ran end to end
        and 0.0 <= m["real_bound_holds_fraction"] <= 1.0
        and 0.0 <= m["real_mean_tv"] <= 1.0
    ),
    "02_safe_system": lambda m: (
        m["dual"]["advbench_test"]["refusal_rate"] > m["base"]["advbench_test"]["refusal_rate"]
        and 0.0 <= m["dual"]["xstest_safe"]["refusal_rate"] <= 1.0
        and m["dual_param_ratio"] > 1.0
        # the second judge (not the teacher) sees the dual system's refusals as safe at least as often as the base
        and m["dual"]["advbench_test"]["second_judge_sgs"] >= m["base"]["advbench_test"]["second_judge_sgs"]
    ),
    # Smoke mode trains a handful of steps: we check that every system was evaluated on every benchmark and that
    # the training ran and produced finite losses, not the quality of a 3-step soft prompt.
    "03_distill": lambda m: (
        all(len(m[s]) == 8 for s in ("base", "dual", "tv-disp", "kl-disp"))
        and all(0.0 <= r["refusal_rate"] <= 1.0 for s in ("tv-disp", "kl-disp") for r in m[s].values())
        and all(math.isfinite(m["training"][n]["final_loss"]) for n in ("tv-disp", "kl-disp"))
        and all(m["fidelity_kl"][n] >= 0.0 for n in ("tv-disp", "kl-disp"))
        and all(
            0.0 <= r["second_judge_sgs"] <= 1.0
            for s in ("base", "dual", "tv-disp", "kl-disp")
            for b, r in m[s].items()
            if b in ("advbench_test", "jbb_harmful", "bundled_harmful_test")
        )
    ),
}


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
    assert names <= set(CHECKS), f"notebooks without assertions: {sorted(names - set(CHECKS))}"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, smoke_env):
    run_notebook(path, smoke_env / "executed", {"SMOKE": True})
    record = load_metrics(path.stem)
    assert record["config"].get("SMOKE") is True, "the notebook must record its parameters in its config"
    assert CHECKS[path.stem](record["metrics"]), record["metrics"]
    assert list((smoke_env / "figures").glob(f"{path.stem[:2]}_*.html")), "the notebook saved no figure"
