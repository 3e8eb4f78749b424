"""Same seed, same numbers: the distillation pipeline at smoke size, from empty caches and from warm ones."""

from __future__ import annotations

import pytest

from dispsafe_nb.guards.guard_training import GuardTrainingConfig
from dispsafe_nb.study.pipeline import PipelineConfig, run_pipeline

# A guard small enough to train three times in a test (the content key makes each fresh cache retrain it).
SMALL_GUARD = GuardTrainingConfig(limits={"alpaca": 80, "toxigen": 80}, head_steps=100, finetune_epochs=1)


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_cold_and_warm(llm, tmp_path, monkeypatch):
    cfg = PipelineConfig(guard=SMALL_GUARD)
    cold = []
    for name in ("first", "second"):
        monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path / name))
        cold.append(run_pipeline(cfg, llm))
    warm = run_pipeline(cfg, llm)  # the second cache is warm now: guard and teacher samples are read back
    for run in (cold[1], warm):
        assert run["guard"] == cold[0]["guard"]
        assert run["alphas"] == cold[0]["alphas"]
        assert run["losses"] == cold[0]["losses"]
        assert run["answers"] == cold[0]["answers"]
        assert run["metrics"] == cold[0]["metrics"]
    assert set(cold[0]["metrics"]) == {"base", "dual", "tv-disp", "kl-disp"}
    # and a different seed is a different run (the test could fail)
    other = run_pipeline(PipelineConfig(guard=SMALL_GUARD, seed=1), llm)
    assert other["alphas"] != cold[0]["alphas"] or other["losses"] != cold[0]["losses"]
