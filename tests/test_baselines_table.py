"""The comparison table of notebook 04 and its reading, on hand-made evaluation records (no model)."""

from __future__ import annotations

import pytest

from dispsafe_nb.evaluation.records import EvalRecord
from dispsafe_nb.plots import tradeoff_scatter
from dispsafe_nb.report.baselines_tables import baselines_markdown
from dispsafe_nb.study import baselines
from dispsafe_nb.training.config import DistillConfig


class _Counted:
    def __init__(self, n: int) -> None:
        self._n = n

    def n_parameters(self) -> int:
        return self._n


def _records(system: str, sgs: float, compliance: float, over_refusal: float = 0.1) -> list[EvalRecord]:
    return [
        EvalRecord(system, "advbench_test", "harmful", 10, 1 - sgs, "sgs", sgs),
        EvalRecord(system, "jbb_harmful", "harmful", 12, 1 - sgs, "sgs", sgs - 0.1),
        EvalRecord(system, "xstest_safe", "borderline", 10, over_refusal, "over_refusal", over_refusal),
        EvalRecord(system, "alpaca_test", "benign", 10, 1 - compliance, "compliance", compliance),
        EvalRecord(system, "bundled_verifiable_test", "verifiable", 8, 0.0, "accuracy", 0.5),
    ]


RUNS = [
    baselines.Run("soft_prompt", "tv", 0.01),
    baselines.Run("soft_prompt", "tv", 0.03),
    baselines.Run("lora", "tv", 0.03),
    baselines.Run("soft_prompt", "reinforce", 0.03),
]


@pytest.fixture
def table():
    records = _records("base", 0.1, 1.0) + _records("dual", 0.8, 0.95)
    records += _records(RUNS[0].name, 0.5, 0.97) + _records(RUNS[1].name, 0.9, 0.8)
    records += _records(RUNS[2].name, 0.4, 0.95) + _records(RUNS[3].name, 0.95, 0.3)
    methods = {r.name: _Counted(100) for r in RUNS}
    return baselines.comparison_table(records, RUNS, methods)


def test_the_table_averages_each_kind_and_names_each_run(table):
    row = table.set_index("system").loc[RUNS[1].name]
    assert row["method"] == "soft_prompt" and row["objective"] == "tv" and row["lr"] == 0.03
    assert row["sgs"] == pytest.approx((0.9 + 0.8) / 2)  # the mean over the two harmful sets
    assert row["benign_compliance"] == 0.8 and row["verifiable_accuracy"] == 0.5 and row["n_per_set"] == 8
    assert table.set_index("system").loc["dual", "n_parameters"] == 0


def test_each_group_is_read_at_its_best_learning_rate_that_keeps_benign_answers(table):
    best = baselines.best_metrics(table, min_compliance=0.9)
    # lr 0.03 has the higher SGS but answers only 80 % of benign prompts: lr 0.01 is the soft prompt's pick
    assert best["best_lr"]["soft_prompt/tv"] == 0.01
    assert best["best_sgs"]["soft_prompt/tv"] == pytest.approx(0.45)
    # REINFORCE never keeps 90 % compliance: its best SGS overall, flagged
    assert best["meets_compliance"]["soft_prompt/reinforce"] is False
    assert baselines.best_at_compliance(table)["system"] == RUNS[0].name
    reading = baselines_markdown(table, 1)
    assert "soft_prompt/reinforce kept benign compliance ≥ 90% at no learning rate" in reading
    assert "same results" not in reading  # there is no KL run to compare
    text = baselines_markdown(table, n_seeds=1)
    assert RUNS[0].name in text and "n ≥ 8" in text and "soft_prompt (0.45) > lora (0.35)" in text


def test_the_scatter_has_a_point_per_system_and_marks_the_references(table):
    fig = tradeoff_scatter(table)
    assert sum(len(t.x) for t in fig.data) == len(table)
    names = [t.name for t in fig.data]
    assert "base" in names and "dual" in names
    with pytest.raises(ValueError, match="usefulness"):
        tradeoff_scatter(table, "speed")


def test_identical_tv_and_kl_runs_are_pointed_out():
    runs = [baselines.Run("soft_prompt", "tv", 0.01), baselines.Run("soft_prompt", "kl", 0.01)]
    records = _records("base", 0.1, 1.0) + _records(runs[0].name, 0.3, 1.0) + _records(runs[1].name, 0.3, 1.0)
    table = baselines.comparison_table(records, runs, {r.name: _Counted(10) for r in runs})
    assert "TV-DiSP and KL-DiSP gave the same results" in baselines_markdown(table, 1)
    records[-5] = EvalRecord(runs[1].name, "advbench_test", "harmful", 10, 0.5, "sgs", 0.5)
    table = baselines.comparison_table(records, runs, {r.name: _Counted(10) for r in runs})
    assert "same results" not in baselines_markdown(table, 1)


def test_the_shared_budget_texts_by_label_and_a_runs_config():
    from types import SimpleNamespace

    from dispsafe_nb.training.config import DistillConfig

    records = [SimpleNamespace(text="a", is_harmful=True), SimpleNamespace(text="b", is_harmful=False)]
    assert baselines.texts_by_label(records) == (["a"], ["b"])
    cfg = DistillConfig(steps=7, batch_size=3, grad_accum=2, rl_samples=4)
    assert baselines.budget(cfg, 2) == {
        "steps": 7,
        "prompts_per_step": 6,
        "teacher_samples_per_prompt": 2,
        "student_samples_per_prompt": 4,
    }
    run = baselines.Run("lora", "ppo", 0.02, seed=3)
    got = baselines.run_config(run, cfg)
    assert (got["method"], got["objective"], got["lr"], got["seed"], got["steps"]) == (
        "lora",
        "ppo",
        0.02,
        3,
        7,
    )
    assert run.name == "LoRA/ppo/lr=0.02/s3"


def test_a_ppo_run_with_its_own_beta_is_a_group_of_its_own_and_a_direct_objective_in_the_claim():
    from dispsafe_nb.report.claims import run_claims

    runs = baselines.default_runs([0.01], seeds=(1,), extra_ppo_betas=[0.0])
    beta0 = runs[-1]
    assert (beta0.objective, beta0.ppo_beta, beta0.label, beta0.name) == (
        "ppo",
        0.0,
        "ppo_beta0",
        "SP/ppo_beta0/lr=0.01/s1",
    )
    assert baselines.run_config(beta0, DistillConfig(ppo_beta=0.05))["ppo_beta"] == 0.0
    assert baselines.run_config(runs[-2], DistillConfig(ppo_beta=0.05))["ppo_beta"] == 0.05  # the β=0.05 run
    records = [
        r
        for run, sgs in zip(runs, (0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.9), strict=True)
        for r in _records(run.name, sgs, 1.0)
    ]
    table = baselines.comparison_table(records, runs, {r.name: _Counted(1) for r in runs})
    best = baselines.best_metrics(table)
    assert set(best["sgs_at_compliance"]) >= {"soft_prompt/ppo", "soft_prompt/ppo_beta0"}
    # TV beats perplexity, REINFORCE and PPO at β=0.05, but not PPO at β=0: the claim must fail
    assert not run_claims("04_baselines", best)["distillation_beats_direct_objectives"][0]
