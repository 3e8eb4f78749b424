"""The benchmark scripts' own logic (their full runs are `make benchmark` / `make benchmark-distill`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dispsafe_nb.common.paths import REPO_ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smoke_run(name: str, tmp_path) -> tuple[dict, Path]:
    """Runs `benchmarks/<name>.py --smoke` in a subprocess; returns its written JSON and the file."""
    import json
    import subprocess
    import sys

    out = tmp_path / f"{name}.json"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out)],
        check=True,
        cwd=REPO_ROOT,
        timeout=900,
    )
    return json.loads(out.read_text()), out


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


def _bench_result(naive, fp32, bf16, bf16_flops, peak, decode, batched, latency, share):
    def variant(tps, flops=1.0):
        return {"tokens_per_s": tps, "achieved_flops_per_s": flops}

    training = {"naive_fp32": variant(naive), "separate_fp32": variant(naive), "ours_fp32": variant(fp32)}
    return {
        "training": {"batch_4": {**training, "ours_bf16": variant(bf16, bf16_flops)}},
        "machine_limits": {"bf16_peak": peak},
        "decoding": {
            "decode_fraction_of_bandwidth_bound": decode,
            "batched_generation_speedup_fp32": batched,
        },
        "latency": {"soft_prompt_latency_ratio": latency},
        "flops_and_memory": {"soft_prompt_parameter_share": share},
    }


def test_costs_targets_are_judged_like_for_like():
    judge = _load("costs").judge_targets
    met = judge(_bench_result(10, 31, 60, 60, 100, 0.7, 2.1, 1.04, 0.0004), "batch_4")
    assert all(t["met"] for t in met.values()), met
    assert met["training_speedup_vs_naive"]["value"] == pytest.approx(3.1)  # fp32 against fp32
    # a fast bf16 step does not rescue a slow fp32 one
    missed = judge(_bench_result(10, 29, 90, 40, 100, 0.5, 1.9, 1.06, 0.002), "batch_4")
    assert not any(t["met"] for t in missed.values()), missed


@pytest.mark.slow
def test_costs_benchmark_smoke_run_writes_every_figure(tmp_path):
    result, _ = _smoke_run("costs", tmp_path)
    assert set(result["targets"]) == set(_load("costs").TARGETS)
    assert {"naive_fp32", "separate_fp32", "ours_fp32", "ours_bf16"} <= set(result["training"]["batch_2"])
    training = result["training"]["batch_2"]
    assert training["ours_fp32"]["loss"] == pytest.approx(training["naive_fp32"]["loss"], rel=1e-3)
    bucketing = result["training_bucketing"]
    assert bucketing["length"]["loss"] == pytest.approx(bucketing["none"]["loss"], rel=1e-4)
    assert bucketing["length"]["padded_share"] <= bucketing["none"]["padded_share"]
    fm = result["flops_and_memory"]
    assert fm["ours"]["gflops_per_token_analytic"] == pytest.approx(
        fm["ours"]["gflops_per_token_flop_counter"]
    )
    assert result["machine"]["torch"] and result["config"]["smoke"] is True
    text = _load("costs").report(result)
    assert "| training speedup vs naive |" in text and "| ours_bf16 | 2 |" in text
    assert "Length bucketing (one step of 2 micro-batches of 2" in text


def test_baselines_report_renders_seed_means_and_claims():
    report = _load("baselines").report

    def seed(sgs_tv, lr):
        table = [
            {
                "system": "base",
                "method": "base",
                "objective": None,
                "lr": None,
                "n_parameters": 0,
                "sgs": 0.0,
                "benign_compliance": 1.0,
                "n_per_set": 20,
            },
            {
                "system": "dual",
                "method": "dual",
                "objective": None,
                "lr": None,
                "n_parameters": 0,
                "sgs": 0.8,
                "benign_compliance": 1.0,
                "n_per_set": 20,
            },
            {
                "system": "SP/tv",
                "method": "soft_prompt",
                "objective": "tv",
                "lr": lr,
                "n_parameters": 11520,
                "sgs": sgs_tv,
                "benign_compliance": 0.95,
                "n_per_set": 20,
            },
            {
                "system": "refusal direction",
                "method": "steering_vector",
                "objective": "diff_in_means",
                "lr": None,
                "n_parameters": 576,
                "sgs": 0.1,
                "benign_compliance": 1.0,
                "n_per_set": 20,
            },
        ]
        return {
            "table": table,
            "best_sgs": {"soft_prompt/tv": sgs_tv},
            "best_compliance": {"soft_prompt/tv": 0.95},
            "best_lr": {"soft_prompt/tv": lr},
            "sgs_at_compliance": {"soft_prompt/tv": sgs_tv},
        }

    result = {
        "per_seed": {"0": seed(0.4, 0.01), "1": seed(0.6, 0.03)},
        "summary": {"sgs_at_compliance": {"soft_prompt/tv": {"mean": 0.5}}},
        "claims_on_seed_means": {"x_beats_y": {"reproduced": False, "statement": "x beats y"}},
        "config": {"limit": 24},
    }
    text = report(result)
    assert "| soft_prompt/tv | 11,520 | 0.50 ± 0.14 | 2/2 | 0.95 ± 0.00 | 0.01, 0.03 |" in text
    assert (
        "| dual | 0 | 0.80 ± 0.00 |" in text
        and "2 training seed(s)" in text
        and "up to 24 per set (the smallest set has 20)" in text
    )
    assert "NOT reproduced: x_beats_y — x beats y" in text


def test_baselines_runs_of_other_seeds_merge_and_mismatched_ones_do_not():
    merge = _load("baselines").merge

    def run(seed, sgs, lrs=(0.01,)):
        return {
            "config": {"seeds": [seed], "lrs": list(lrs), "out": f"r{seed}.json"},
            "per_seed": {
                str(seed): {
                    "best_sgs": {"soft_prompt/tv": sgs, "lora/tv": 0.1},
                    "best_compliance": {"soft_prompt/tv": 1.0, "lora/tv": 1.0},
                    "sgs_at_compliance": {"soft_prompt/tv": sgs, "lora/tv": 0.1},
                }
            },
            "seeds_finished": [seed],
            "machine": {"git_commit": f"c{seed}"},
            "wall_s": 10.0,
        }

    merged = merge([run(0, 0.2), run(1, 0.4)])
    assert merged["summary"]["sgs_at_compliance"]["soft_prompt/tv"]["n_seeds"] == 2
    assert merged["summary"]["sgs_at_compliance"]["soft_prompt/tv"]["mean"] == pytest.approx(0.3)
    assert merged["seeds_finished"] == ["0", "1"] and merged["wall_s"] == 20.0
    assert [r["machine"]["git_commit"] for r in merged["merged_runs"]] == ["c0", "c1"]
    with pytest.raises(ValueError, match=r"differ in \['lrs'\]"):
        merge([run(0, 0.2), run(1, 0.4, lrs=(0.03,))])
    with pytest.raises(ValueError, match=r"seed\(s\) \['0'\] appear in more than one run"):
        merge([run(0, 0.2), run(0, 0.4)])


def test_provenance_names_the_commit_and_the_processor():
    import re

    from dispsafe_nb.common.provenance import cpu_name, git_commit

    commit = git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert isinstance(cpu_name(), str)


def test_generalise_epochs_change_only_an_epoch_budget():
    import argparse

    settings = _load("generalise").budget_settings
    assert settings(argparse.Namespace(budget="paper", epochs=0))["epochs"] == 1
    two = settings(argparse.Namespace(budget="paper", epochs=2))
    assert two["epochs"] == 2 and two["batch_size"] * two["grad_accum"] == 32
    with pytest.raises(SystemExit, match="--steps"):
        settings(argparse.Namespace(budget="notebook", epochs=2))


@pytest.mark.slow
def test_generalise_benchmark_smoke_run_reports_every_set(tmp_path):
    import subprocess
    import sys

    result, out = _smoke_run("generalise", tmp_path)
    from dispsafe_nb.evaluation.generalisation import BENCHES

    run = result["per_size"]["24"]["objectives"]["tv"]
    assert set(run["comparison"]["sets"]) == set(BENCHES)
    assert run["config"]["grad_accum"] == 4 and run["config"]["sampling"] == "epoch"
    assert result["per_size"]["24"]["mix"]["n"] == 24 and result["machine"]["git_commit"]
    assert "| jailbreak_wrapped (sgs) | 3 |" in _load("generalise").report(result)
    assert isinstance(result["reference_cached"], bool)
    compared = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "generalise.py"), "--compare", str(out)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert "| generalise | tv | soft | 24 | 0.30/0.10 |" in compared.stdout


@pytest.mark.slow
def test_harm_probe_benchmark_smoke_run_scores_the_probe_system_on_every_set(tmp_path):
    from dispsafe_nb.evaluation.generalisation import BENCHES

    result, _ = _smoke_run("harm_probe", tmp_path)
    assert set(result["comparison"]["sets"]) == set(BENCHES) and set(result["flag_rate"]) == set(BENCHES)
    assert len(result["layers"]) == 30 and 0 <= result["layer"] < 30
    row = result["layers"][result["layer"]]
    assert row["held_out_auroc"] == max(r["held_out_auroc"] for r in result["layers"])
    assert 0 <= row["xstest_auroc"] <= 1 and result["mix"]["n"] == result["config"]["size"]
    assert "probe system / dual" in _load("harm_probe").report(result)


def test_load_targets_compare_the_largest_long_run_with_the_smallest():
    load = _load("load")

    def run(peak):
        return {"peak_bytes": peak}

    results = {
        "probe/long/50": run(2.0e9),
        "probe/long/800": run(2.1e9),
        "probe/short/800": run(1.9e9),
        "evaluate/long/50": run(2.0e9),
        "evaluate/long/800": run(4.5e9),
    }
    targets = load.judge(results, [50, 200, 800])
    assert targets["probe_peak_flat_in_prompts"]["value"] == pytest.approx(1.05)
    assert targets["probe_peak_flat_in_prompts"]["met"] and targets["probe_peak_under_4gb"]["met"]
    assert (
        not targets["evaluate_peak_flat_in_prompts"]["met"] and not targets["evaluate_peak_under_4gb"]["met"]
    )
    assert "probe_peak_flat_in_prompts" not in load.judge({"probe/long/50": run(1e9)}, [50, 800])


def test_load_prompts_are_long_jailbreak_wrapped_held_out_requests_and_distinct():
    from dispsafe_nb.data import load_dataset

    load = _load("load")
    long = load.long_prompts(300)
    assert len({r.text for r in long}) == 300
    assert 1800 <= min(len(r.text) for r in long) and max(len(r.text) for r in long) <= 2200
    held_out = [r.text for r in load_dataset("advbench", split="test")]
    assert all(any(h in r.text for h in held_out) for r in long)
    short = load.short_prompts(50)
    assert len(short) == 50 and all(r.split == "test" for r in short)


@pytest.mark.slow
def test_device_benchmark_smoke_run_compares_the_engines_on_every_system_and_set(tmp_path):
    result, out = _smoke_run("device", tmp_path)
    pairs = {(r["system"], r["benchmark"]) for r in result["agreement"]}
    assert pairs == {(s, b) for s in ("base", "dual", "soft_prompt") for b in ("jbb_harmful", "xstest_safe")}
    assert all(r["n"] == 3 and 0 <= r["agreement"] <= 1 for r in result["agreement"])
    assert set(result["targets"]) >= {"eval_speedup", "batch1_decode_speedup", "min_verdict_agreement"}
    assert all(set(t) == {"value", "target", "met"} for t in result["targets"].values())
    assert result["config"]["model_on_llamacpp"]["gguf_sha256"] and result["machine"]["git_commit"]
    assert list(out.with_suffix(".journals").glob("*.jsonl")), (
        "the evaluations are journaled beside the report"
    )
