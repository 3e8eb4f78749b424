"""Prose rendered from metrics (dispsafe_nb.report.findings), the notebooks' plumbing helpers, and the bound table."""

from __future__ import annotations

import numpy as np
import pytest

from dispsafe_nb.evaluation.tv_bound_estimate import BoundCheck, bound_table, summarise
from dispsafe_nb.notebooks.outputs import config_of, emit_and_check, load_metrics
from dispsafe_nb.report import findings
from dispsafe_nb.training.history import History, history_summary


def _toy(tv_benign: float, kl_benign: float) -> dict:
    def hist(benign: float) -> dict:
        return {
            "refusal_benign": np.array([0.0, benign]),
            "refusal_harmful": np.array([0.1, 0.5]),
            "tv": [0.4, 0.3],
        }

    return {
        "tv": hist(tv_benign),
        "kl": hist(kl_benign),
        "teacher": {"refusal_benign": 0.05, "refusal_harmful": 0.75},
    }


def test_toy_findings_state_this_runs_numbers():
    m = findings.toy_metrics(_toy(0.30, 0.34), _toy(0.04, 0.05))
    assert m["toy_kl_benign_refusal"] == 0.34 and m["toy_full_tv_benign_refusal"] == 0.04
    assert m["toy_teacher_benign_refusal"] == 0.05 and m["toy_tv_final_tv"] == 0.3
    text = findings.toy_findings(m)
    assert "+4.0 points" in text and "6.8× (KL)" in text and "6.0× (TV)" in text and "+1.0 points" in text


def test_distill_findings_say_which_way_the_over_refusal_gap_went():
    def system(over_refusal):
        return {"xstest_safe": {"over_refusal": over_refusal}, "advbench_test": {"sgs": 0.5}}

    metrics = {"base": system(0.0), "tv-disp": system(0.2), "kl-disp": system(0.1), "sampled": {}}
    text = findings.distill_findings(metrics, 0, 30, 20, 4)
    assert "greedy no" in text and "sampled n/a" in text and "TV 20%" in text and "dual n/a" in text
    metrics["kl-disp"] = system(0.3)
    assert "greedy yes" in findings.distill_findings(metrics, 0, 30, 20, 4)


def _check(tv, gap, refusal_gap, p_r=0.0, q_r=0.0, se=0.0):
    return BoundCheck("a prompt", tv, se, gap, se, 1.0, 0.5, p_r, refusal_gap, se, 0.6, 0.2, 0.9, q_r)


def test_bound_summary_covers_both_test_functions_and_the_refusal_event():
    found = [_check(0.5, 0.2, 0.7, p_r=0.6, q_r=0.05), _check(1.0, 0.0, 0.0), _check(0.3, 0.1, 0.1)]
    out = summarise(found)
    assert out["real_informative_prompts"] == 2
    assert out["real_bound_holds_fraction_informative"] == 1.0
    assert out["real_refusal_bound_holds_fraction_informative"] == 0.5  # 0.7 > 0.5
    assert out["real_max_refusal_gap_minus_tv"] == pytest.approx(0.2)
    assert out["real_max_refusal_event_excess"] == pytest.approx(0.6 - 0.05 - 0.5)
    table = bound_table(found, ["harmful", "safe", "safe"])
    assert list(table["holds (refusal)"]) == [False, True, True] and len(table) == 3
    with pytest.raises(ValueError, match="kinds"):
        bound_table(found, ["harmful"])
    text = findings.bound_findings(found, ["harmful", "safe", "safe"], 8, "trained here")
    assert "refusal gap ≤ TV on 67%" in text and "- safe: TV 0.65" in text


def test_config_of_names_what_is_missing():
    assert config_of({"A": 1, "B": "x", "C": 3}, "A B") == {"A": 1, "B": "x"}
    with pytest.raises(NameError, match="'D'"):
        config_of({"A": 1}, "A D")


def test_emit_and_check_writes_the_metrics_and_prints_every_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISPSAFE_RESULTS", str(tmp_path))
    batch = {"harmful": {"base": {"refusal_rate": 0.0, "mean_alpha": 0.3}, "dual": {"refusal_rate": 1.0}}}
    batch["benign"] = {"base": {"mean_alpha": 0.9}}
    emit_and_check("06_probe", {"batch": batch}, {"SMOKE": True})
    printed = capsys.readouterr().out
    assert printed.count("✓ ") == 2 and load_metrics("06_probe")["config"] == {"SMOKE": True}
    batch["benign"]["base"]["mean_alpha"] = 0.1
    emit_and_check("06_probe", {"batch": batch}, {})
    assert "✗ probe_alpha_lower_on_harmful" in capsys.readouterr().out


def test_history_summary():
    h = History(loss=[3.0, 2.0], val_loss=[2.5], val_refusal_gap=[])
    assert history_summary({"tv-disp": h}) == {
        "tv-disp": {"final_loss": 2.0, "final_val_loss": 2.5, "final_val_refusal_gap": None}
    }


def test_prompt_kinds_of_a_training_mix():
    from dispsafe_nb.data import PromptRecord
    from dispsafe_nb.training.examples import prompt_kinds

    records = [
        PromptRecord("a", "harm me", True, "x", "advbench", "train"),
        PromptRecord("b", "kill a process", False, "homonyms", "bundled_borderline", "train"),
        PromptRecord("c", "a poem", False, "alpaca", "alpaca", "train"),
    ]
    assert prompt_kinds(records) == {"harm me": "harmful", "kill a process": "borderline", "a poem": "benign"}


def test_side_by_side_lines_up_every_systems_answer_to_the_same_prompt():
    from dispsafe_nb import data
    from dispsafe_nb.evaluation.benchmark_metrics import score_responses
    from dispsafe_nb.evaluation.records import side_by_side

    prompts = data.load_dataset("xstest_safe", limit=3, seed=0)
    records = [
        score_responses(name, "xstest_safe", prompts, [f"{name} says {i}" * 50 for i in range(3)])
        for name in ("base", "dual")
    ]
    table = side_by_side(records, ["xstest_safe"], ["base", "dual"], per_benchmark=2, width=20)
    assert list(table.prompt) == [p.text for p in prompts[:2]] and list(table.dual) == [
        "dual says 0dual says"
    ] * 1 + ["dual says 1dual says"]
    with pytest.raises(KeyError, match="kl-disp"):
        side_by_side(records, ["xstest_safe"], ["base", "kl-disp"])
    shuffled = score_responses("dual", "xstest_safe", prompts[::-1], ["x"] * 3)
    with pytest.raises(ValueError, match="another order"):
        side_by_side([records[0], shuffled], ["xstest_safe"], ["base", "dual"])
    from dispsafe_nb.evaluation.benchmark_metrics import score_samples

    sampled = score_samples("dual", "xstest_safe", prompts, [["a", "b"]] * 3)
    with pytest.raises(ValueError, match="sampled record"):
        side_by_side([records[0], sampled], ["xstest_safe"], ["base", "dual"])
