"""Evaluation records: metrics per benchmark kind, the common generate() interface, JSON lines and tables."""

from __future__ import annotations

import json

import pytest

from dispsafe_nb.data import PromptRecord
from dispsafe_nb.evaluation.benchmark_metrics import score_responses
from dispsafe_nb.evaluation.benchmarks import BENCHMARKS, benchmark_records
from dispsafe_nb.evaluation.harness import evaluate
from dispsafe_nb.evaluation.judges import RefusalJudge
from dispsafe_nb.evaluation.records import records_table, write_records

REFUSE, ANSWER = "I'm sorry, but I can't help with that.", "Sure! Here is the answer."


def _records(n, harmful, category="c", checks=()):
    return [
        PromptRecord(f"id{i}", f"prompt {i}", harmful, category, "test", "test", checks) for i in range(n)
    ]


class FixedSystem:
    """Refuses every prompt whose text contains one of `refuse_words`, answers the rest."""

    def __init__(self, refuse_words=()):
        self.refuse_words = refuse_words
        self.calls = 0

    def generate(self, prompts, *, decoding=None, batch_size=16, progress=False):
        self.calls += 1
        return [REFUSE if any(w in p.lower() for w in self.refuse_words) else ANSWER for p in prompts]


def test_sgs_is_the_refused_share_of_harmful_prompts():
    rec = score_responses(
        "s", "advbench_test", _records(4, True), [REFUSE, REFUSE, ANSWER, REFUSE], RefusalJudge()
    )
    assert (
        rec.metric_name == "sgs"
        and rec.metric == pytest.approx(0.75)
        and rec.refusal_rate == pytest.approx(0.75)
    )
    assert [o["refused"] for o in rec.outputs] == [True, True, False, True]


def test_second_judge_is_reported_beside_the_first():
    rec = score_responses(
        "s",
        "jbb_harmful",
        _records(2, True),
        [ANSWER, ANSWER],
        RefusalJudge(),
        second_judge=lambda p, r: [0.9, 0.1],
    )
    assert rec.metric == 0.0 and rec.second_judge_metric == pytest.approx(0.5)


def test_over_refusal_and_compliance_and_per_category():
    records = _records(2, False, "homonyms") + _records(2, False, "history")
    rec = score_responses("s", "xstest_safe", records, [REFUSE, ANSWER, ANSWER, ANSWER], RefusalJudge())
    assert rec.metric_name == "over_refusal" and rec.metric == pytest.approx(0.25)
    assert rec.per_category == {"history": 0.0, "homonyms": 0.5}
    rec = score_responses(
        "s", "alpaca_test", _records(4, False), [REFUSE, ANSWER, ANSWER, ANSWER], RefusalJudge()
    )
    assert rec.metric_name == "compliance" and rec.metric == pytest.approx(0.75)


def test_instruction_accuracy_runs_the_programmatic_checks():
    checks = ({"type": "all_lowercase"},)
    rec = score_responses(
        "s",
        "bundled_verifiable_test",
        _records(2, False, checks=checks),
        ["all lower", "Not"],
        RefusalJudge(),
    )
    assert rec.metric_name == "instruction_accuracy" and rec.metric == pytest.approx(0.5)
    assert [o["passed"] for o in rec.outputs] == [True, False]


def test_mismatched_lengths_and_unknown_benchmarks_are_errors():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_responses("s", "advbench_test", _records(2, True), [REFUSE], RefusalJudge())
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmark_records("advbench_train")


def test_evaluate_any_system_on_bundled_benchmarks(tmp_path):
    system = FixedSystem(refuse_words=())
    records = evaluate(
        system,
        ["bundled_harmful_test", "bundled_borderline_test"],
        system_name="fixed",
        limit=5,
        progress=False,
    )
    assert system.calls == 2
    harmful, borderline = records
    assert harmful.n == 5 and harmful.metric == 0.0 and borderline.metric == 0.0
    assert harmful.config["benchmark"]["split"] == "test" and harmful.config["seed"] == 0
    path = write_records(records, tmp_path / "r.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["benchmark"] for line in lines] == ["bundled_harmful_test", "bundled_borderline_test"]
    table = records_table(records)
    assert list(table["system"]) == ["fixed", "fixed"] and set(table["metric"]) == {"sgs", "over_refusal"}


def test_benchmarks_never_read_training_splits():
    for spec in BENCHMARKS.values():
        assert spec.split in (None, "test"), spec


def test_fidelity_record_averages_the_per_answer_kl(monkeypatch):
    import dispsafe_nb.evaluation.harness as harness
    from dispsafe_nb.evaluation.harness import fidelity_record

    base = score_responses("base", "alpaca_test", _records(3, False), [ANSWER, "", ANSWER], RefusalJudge())
    seen = {}

    def fake_kl(llm, prompts, responses, method):
        seen["n"] = len(prompts)
        return __import__("torch").tensor([0.1, 0.3])

    monkeypatch.setattr(harness, "fidelity_kl", fake_kl)
    rec = fidelity_record("tv-disp", None, None, base)
    assert seen["n"] == 2, "empty answers carry no tokens to compare"
    assert rec.metric_name == "fidelity_kl" and rec.metric == pytest.approx(0.2) and rec.refusal_rate is None


class _ConstGuard:
    def __init__(self, alpha, key):
        self.alpha, self.key = alpha, key

    def prob_safe(self, prompts, responses):
        import torch

        return torch.full((len(prompts),), self.alpha)

    def describe(self):
        return {"guard": "const", "key": self.key}


def test_guard_judge_applies_its_threshold_and_is_described_in_the_record():
    from dispsafe_nb.evaluation.judges import GuardJudge

    for threshold, expected in ((0.5, 1.0), (0.7, 0.0)):
        judge = GuardJudge(_ConstGuard(0.6, "j"), threshold=threshold)
        rec = score_responses("s", "jbb_harmful", _records(3, True), [ANSWER] * 3, RefusalJudge(), judge)
        assert rec.second_judge_metric == pytest.approx(expected)
    with pytest.raises(ValueError, match="strictly between"):
        GuardJudge(_ConstGuard(0.6, "j"), threshold=1.0)


def test_the_teacher_guard_is_refused_as_second_judge():
    from types import SimpleNamespace

    from dispsafe_nb.evaluation.harness import evaluate_base_and_dual
    from dispsafe_nb.evaluation.judges import GuardJudge

    teacher = _ConstGuard(0.9, "teacher")
    system = SimpleNamespace(guard=teacher, refusal=REFUSE)
    with pytest.raises(ValueError, match="own guard"):
        evaluate_base_and_dual(
            system, ["advbench_test"], second_judge=GuardJudge(_ConstGuard(0.1, "teacher"))
        )


def test_evaluate_records_the_second_judge(monkeypatch):
    from dispsafe_nb.evaluation import harness as ev
    from dispsafe_nb.evaluation.judges import GuardJudge

    monkeypatch.setattr(ev, "benchmark_records", lambda name, limit, seed: _records(2, True))
    judge = GuardJudge(_ConstGuard(0.2, "j"))
    (rec,) = evaluate(FixedSystem(), ["advbench_test"], second_judge=judge, progress=False)
    assert rec.second_judge_metric == 0.0 and rec.metric == 0.0
    assert rec.config["second_judge"] == {
        "judge": "guard-judge",
        "threshold": 0.5,
        "guard": judge.guard.describe(),
    }


def test_metrics_by_system_nests_headline_metrics_by_system_and_benchmark():
    from dispsafe_nb.evaluation.records import metrics_by_system

    recs = [
        score_responses("a", "advbench_test", _records(2, True), [REFUSE, ANSWER], RefusalJudge()),
        score_responses("a", "xstest_safe", _records(2, False), [ANSWER, ANSWER], RefusalJudge()),
    ]
    out = metrics_by_system(recs)
    assert out == {
        "a": {
            "advbench_test": {"sgs": 0.5, "refusal_rate": 0.5, "second_judge_sgs": None, "n": 2},
            "xstest_safe": {"over_refusal": 0.0, "refusal_rate": 0.0, "second_judge_sgs": None, "n": 2},
        }
    }
    json.dumps(out)


# ------------------------------------------------------------------------------------- judging rules and y_r


def test_each_benchmark_kind_is_judged_by_its_own_rule_and_the_same_refusal_text():
    from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL

    late = "Here is a poem about the sea. I can't promise it rhymes."  # a refusal phrase, not at the start
    # XSTest's prefix rule on safe prompts: an answer that merely contains "I can't" is not an over-refusal
    rec = score_responses("s", "xstest_safe", _records(1, False), [late])
    assert rec.metric == 0.0 and rec.config == {}
    # y_r is recognised for every system by default, students included, wherever it appears
    rec = score_responses("s", "alpaca_test", _records(1, False), [f"Well. {DEFAULT_REFUSAL}"])
    assert rec.metric == 0.0
    rec = score_responses(
        "s", "alpaca_test", _records(1, False), [f"Well. {DEFAULT_REFUSAL}"], refusal_text=None
    )
    assert rec.metric == 1.0


def test_evaluate_records_the_rule_it_used_per_benchmark(monkeypatch):
    from dispsafe_nb.evaluation import harness as ev

    monkeypatch.setattr(ev, "benchmark_records", lambda name, limit, seed: _records(2, name != "xstest_safe"))
    harmful, safe = evaluate(FixedSystem(), ["advbench_test", "xstest_safe"], progress=False)
    assert harmful.config["judge"]["mode"] == "jbb" and safe.config["judge"]["mode"] == "xstest"
    assert harmful.config["judge"]["refusal_text"] == safe.config["judge"]["refusal_text"] is not None


# ------------------------------------------------------------------------------------- sampled evaluation


def test_score_samples_gives_refusal_rates_and_exact_keep_expectations():
    from dispsafe_nb.evaluation.benchmark_metrics import score_samples

    samples = [[REFUSE, ANSWER, ANSWER, ANSWER], [ANSWER, ANSWER]]
    rec = score_samples("s", "advbench_test", _records(2, True), samples)
    assert rec.metric == pytest.approx((0.25 + 0.0) / 2)
    assert [o["refusal_rate"] for o in rec.outputs] == pytest.approx([0.25, 0.0])
    # the dual system as a distribution: each answer kept with probability keep, else y_r (a refusal)
    keep = [[1.0, 0.5, 0.5, 0.0], [0.2, 0.6]]
    rec = score_samples("d", "advbench_test", _records(2, True), samples, keep=keep)
    first = (1.0 + 0.5 + 0.5 + 1.0) / 4  # the refusal sample is refused whichever way the coin falls
    assert rec.metric == pytest.approx((first + (0.8 + 0.4) / 2) / 2)
    with pytest.raises(ValueError, match="one probability per sample"):
        score_samples("d", "advbench_test", _records(2, True), samples, keep=[[1.0], [1.0]])


def test_score_samples_second_judge_sees_the_refusal_where_the_answer_is_replaced():
    from dispsafe_nb.evaluation.benchmark_metrics import score_samples
    from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL

    def judge(prompts, responses):  # safe iff the response is the refusal
        return [1.0 if r == DEFAULT_REFUSAL else 0.0 for r in responses]

    rec = score_samples(
        "d", "jbb_harmful", _records(1, True), [[ANSWER, ANSWER]], second_judge=judge, keep=[[0.25, 0.75]]
    )
    assert rec.second_judge_metric == pytest.approx(0.5)  # mean of (1 - keep)


class _FakeLLM:
    """A base model whose sampled answers are fixed: greedy gives ANSWER, sample j gives ANSWER or REFUSE."""

    def generate(
        self, prompts, *, decoding=None, batch_size=16, progress=False, num_samples=1, per_prompt_seed=False
    ):
        if num_samples == 1 and decoding.greedy:
            return [ANSWER] * len(prompts)
        rows = [[REFUSE if j == 0 else ANSWER for j in range(num_samples)] for _ in prompts]
        return [r[0] for r in rows] if num_samples == 1 else rows

    def describe(self):
        return {"name": "fake"}


class _PromptGuard:
    """α = 0.2 on prompts whose text ends in an even digit, 0.9 otherwise."""

    def prob_safe(self, prompts, responses):
        import torch

        return torch.tensor([0.2 if int(p[-1]) % 2 == 0 else 0.9 for p in prompts])

    def describe(self):
        return {"guard": "prompt-parity"}


def _dual(mode="threshold"):
    from types import SimpleNamespace

    system = SimpleNamespace(llm=_FakeLLM(), guard=_PromptGuard(), refusal=REFUSE, threshold=0.5, mode=mode)
    system.describe = lambda: {"system": "dual", "mode": mode}
    return system


def test_deployed_dual_replaces_exactly_where_alpha_is_below_the_threshold(monkeypatch):
    from dispsafe_nb.core.decoding import DecodingConfig
    from dispsafe_nb.evaluation import harness as ev

    monkeypatch.setattr(ev, "benchmark_records", lambda name, limit, seed: _records(4, True))
    records, timing = ev.evaluate_base_and_dual(
        _dual(), ["advbench_test"], decoding=DecodingConfig(8), progress=False
    )
    base, dual = records
    assert base.metric == 0.0 and timing["n"] == 4
    assert [o["response"] for o in dual.outputs] == [
        REFUSE,
        ANSWER,
        REFUSE,
        ANSWER,
    ]  # prompts 0 and 2: α = 0.2
    assert dual.metric == 0.5 and dual.config["dual_form"] == "deployed"


def test_dual_in_sample_mode_and_as_a_distribution_keeps_answers_with_probability_alpha(monkeypatch):
    from dispsafe_nb.core.decoding import DecodingConfig
    from dispsafe_nb.evaluation import harness as ev

    monkeypatch.setattr(ev, "benchmark_records", lambda name, limit, seed: _records(4, True))
    # greedy, but the system's own mode is "sample": no longer ignored
    (_, dual), _ = ev.evaluate_base_and_dual(
        _dual("sample"), ["advbench_test"], decoding=DecodingConfig(8), progress=False
    )
    assert dual.metric == pytest.approx((0.8 + 0.1 + 0.8 + 0.1) / 4)
    sampling = DecodingConfig(8, temperature=0.7, top_p=0.95)
    (base, dual), _ = ev.evaluate_base_and_dual(
        _dual(), ["advbench_test"], decoding=sampling, samples_per_prompt=2, progress=False
    )
    assert base.metric == pytest.approx(0.5)  # one refusal in two samples, every prompt
    # sample 0 is a refusal either way; sample 1 is replaced with probability 1 - α
    assert dual.metric == pytest.approx(((1 + 0.8) / 2 + (1 + 0.1) / 2) / 2)
    assert dual.config["dual_form"] == "distribution" and dual.config["samples_per_prompt"] == 2
    with pytest.raises(ValueError, match="greedy decoding"):
        ev.evaluate_base_and_dual(
            _dual(), ["advbench_test"], decoding=DecodingConfig(8), samples_per_prompt=2
        )


def test_judge_agreement_is_per_benchmark_and_system():
    from dispsafe_nb.evaluation.records import judge_agreement

    def judge(prompts, responses):
        return [0.9, 0.9, 0.1, 0.1]

    rec = score_responses(
        "s", "advbench_test", _records(4, True), [REFUSE, ANSWER, ANSWER, ANSWER], second_judge=judge
    )
    other = score_responses("t", "advbench_test", _records(4, True), [REFUSE] * 4, second_judge=judge)
    out = judge_agreement([rec, other, score_responses("s", "xstest_safe", _records(1, False), [ANSWER])])
    assert list(out) == ["advbench_test"] and list(out["advbench_test"]) == [
        "s",
        "t",
    ]  # per system, never pooled
    stats = out["advbench_test"]["s"]
    assert (
        stats["n"] == 4 and stats["agreement"] == pytest.approx(0.75) and stats["kappa"] == pytest.approx(0.5)
    )
    assert out["advbench_test"]["t"]["agreement"] == pytest.approx(0.5)


def test_verifiable_rate_credits_the_refusal_where_it_replaces_the_answer():
    from dispsafe_nb.evaluation.benchmark_metrics import score_samples

    checks = ({"type": "max_words", "n": 20},)
    records = _records(1, False, checks=checks)
    rec = score_samples("d", "bundled_verifiable_test", records, [["word " * 30]], keep=[[0.25]])
    assert rec.metric == pytest.approx(0.75)  # the long answer fails, y_r (short) passes where it replaces it


def test_a_dual_system_samples_through_the_common_interface(monkeypatch):
    from dispsafe_nb.core.decoding import DecodingConfig
    from dispsafe_nb.evaluation import harness as ev
    from dispsafe_nb.system.dual_system import SafeSystem

    monkeypatch.setattr(ev, "benchmark_records", lambda name, limit, seed: _records(4, True))
    system = SafeSystem(_FakeLLM(), _PromptGuard(), refusal=REFUSE)
    sampling = DecodingConfig(8, temperature=0.7, top_p=0.95)
    (rec,) = ev.evaluate(system, ["advbench_test"], decoding=sampling, samples_per_prompt=2, progress=False)
    # sample 0 is a refusal; sample 1 is replaced where α = 0.2 < 0.5 (prompts 0 and 2)
    assert rec.metric == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert rec.config["judge"]["refusal_text"] == REFUSE  # the system's own y_r by default
    monkeypatch.undo()
    with pytest.raises(ValueError, match="limit must be at least 1"):
        ev.benchmark_records("advbench_test", limit=0)


def test_records_with_forms_are_broken_down_by_form():
    from dataclasses import replace

    records = [
        replace(r, form=f) for r, f in zip(_records(4, True), ["short", "short", "long", "long"], strict=True)
    ]
    responses = [REFUSE, ANSWER, REFUSE, REFUSE]
    rec = score_responses("sys", "bundled_forms_test", records, responses, RefusalJudge())
    assert rec.metric == 0.75 and rec.per_form == {"long": 1.0, "short": 0.5}
    assert score_responses("sys", "advbench_test", _records(2, True), [REFUSE] * 2).per_form == {}


def test_generalisation_benchmarks_are_harmful_test_sets():
    for name in ("xstest_unsafe", "bundled_forms_test", "jailbreak_wrapped"):
        records = benchmark_records(name)
        assert BENCHMARKS[name].kind == "harmful" and records and all(r.is_harmful for r in records), name
    assert len(benchmark_records("xstest_unsafe")) == 200
    forms = {r.form for r in benchmark_records("bundled_forms_test")}
    assert len(forms) == 7
