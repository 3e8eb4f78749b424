"""The benchmark scripts' own logic (their full runs are `make benchmark` / `make benchmark-distill`)."""

from __future__ import annotations

import importlib.util

import pytest

from dispsafe_nb.paths import REPO_ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(tv_sgs, tv_xs, tv_alpaca, dual_sgs=0.8, dual_xs=0.1):
    def system(sgs, xs, alpaca):
        return {
            "advbench_test": {"sgs": sgs},
            "xstest_safe": {"over_refusal": xs},
            "alpaca_test": {"compliance": alpaca},
        }

    return {"tv-disp": system(tv_sgs, tv_xs, tv_alpaca), "dual": system(dual_sgs, dual_xs, 0.99)}


def test_distill_targets_are_relative_to_the_dual_system():
    targets = _load("distill").targets
    met = targets(_metrics(0.73, 0.19, 0.95))
    assert met["tv_sgs_advbench_vs_dual"]["threshold"] == pytest.approx(0.72)
    assert all(t["met"] for t in met.values()), met
    missed = targets(_metrics(0.71, 0.21, 0.94))
    assert not any(t["met"] for t in missed.values()), missed
    assert missed["tv_xstest_over_refusal_vs_dual"]["threshold"] == pytest.approx(0.2)


def test_baselines_benchmark_averages_each_group_over_the_seeds_it_has():
    over_seeds = _load("baselines").over_seeds
    got = over_seeds([{"soft_prompt/tv": 0.6, "lora/tv": 0.2}, {"soft_prompt/tv": 0.8, "lora/tv": None}])
    assert got["soft_prompt/tv"]["mean"] == pytest.approx(0.7)
    assert got["soft_prompt/tv"]["sd"] == pytest.approx(0.1414213562)
    assert got["soft_prompt/tv"]["n_seeds"] == 2
    assert got["lora/tv"] == {"mean": 0.2, "sd": None, "n_seeds": 1}  # None: no usable run in that seed
    assert over_seeds([{"ppo": None}])["ppo"] == {"mean": None, "sd": None, "n_seeds": 0}
