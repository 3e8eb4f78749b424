"""Work is not lost: a journal keeps finished pieces durably, refuses another job's settings, survives a cut last
line; an interrupted evaluation or probe resumes from it and gives what an uninterrupted run gives."""

from __future__ import annotations

import json

import pytest
from stand_ins import WordGuard

from dispsafe_nb.common.journal import Journal, JournalError
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.evaluation import harness
from dispsafe_nb.evaluation.harness import evaluate, evaluate_students, student_journal


def test_a_journal_gives_back_what_was_recorded(tmp_path):
    path = tmp_path / "j.jsonl"
    book = Journal(path, "job", {"a": 1, "b": [1, 2]})
    book.record("x", {"answers": ["one", "two"]})
    book.record("y", [1.5])
    again = Journal(path, "job", {"b": [1, 2], "a": 1})
    assert len(again) == 2 and again.get("x") == {"answers": ["one", "two"]} and "y" in again
    assert again.get("z") is None
    with pytest.raises(TypeError, match="keys are strings"):
        again.record(3, "v")


def test_a_journal_of_other_settings_is_refused_naming_what_differs(tmp_path):
    path = tmp_path / "j.jsonl"
    Journal(path, "job", {"seed": 0, "limit": 5}).record("x", 1)
    with pytest.raises(JournalError, match=r"settings differ in: seed.*new journal path, or delete"):
        Journal(path, "job", {"seed": 1, "limit": 5})
    with pytest.raises(JournalError, match="another 'job' run"):
        Journal(path, "other job", {"seed": 0, "limit": 5})


def test_a_cut_last_line_is_dropped_and_a_damaged_one_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    book = Journal(path, "job", {})
    book.record("done", 1)
    with path.open("a") as f:
        f.write('{"key": "half", "val')  # the process died while writing
    with pytest.warns(UserWarning, match="cut short"):
        again = Journal(path, "job", {})
    assert list(again.keys()) == ["done"]
    again.record("next", 2)  # appends after the last whole line
    assert list(Journal(path, "job", {}).keys()) == ["done", "next"]
    lines = path.read_text().splitlines()
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match="line 2 is damaged"):
        Journal(path, "job", {})


class _Counting:
    """Refuses prompts whose length is a multiple of 3, answers the others with their text reversed; counts the prompts
    it answered; is interrupted when asked past `fail_after` prompts."""

    def __init__(self, fail_after=None):
        self.prompts, self.fail_after = 0, fail_after

    def generate(self, prompts, *, decoding=None, batch_size=16, progress=False, **_):
        if self.fail_after is not None and self.prompts + len(prompts) > self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.prompts += len(prompts)
        return [
            "I'm sorry, I can't." if len(p) % 3 == 0 else p[::-1] for p in prompts
        ]  # per prompt, as a system

    def describe(self):
        return {"system": "counting"}


def test_an_interrupted_evaluation_resumes_and_gives_the_uninterrupted_records(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "JOURNAL_CHUNK", 4)
    benches, kw = ["bundled_harmful_test", "bundled_borderline_test"], {"limit": 10, "progress": False}
    whole = evaluate(_Counting(), benches, system_name="s", **kw)
    path = tmp_path / "eval.jsonl"
    with pytest.raises(KeyboardInterrupt):  # dies in the second set's third piece
        evaluate(_Counting(fail_after=18), benches, system_name="s", journal=path, **kw)
    assert Journal(path, "evaluate", json.loads(path.read_text().splitlines()[0])["config"]).get(
        "bundled_harmful_test/records"
    )
    resumed_system = _Counting()
    resumed = evaluate(resumed_system, benches, system_name="s", journal=path, **kw)
    assert resumed_system.prompts == 2  # only the unfinished piece of the second set (prompts 8-9)
    assert [(r.benchmark, r.metric, r.outputs) for r in resumed] == [
        (r.benchmark, r.metric, r.outputs) for r in whole
    ]
    again = _Counting()
    evaluate(again, benches, system_name="s", journal=path, **kw)
    assert again.prompts == 0
    with pytest.raises(JournalError, match="limit"):
        evaluate(_Counting(), benches, system_name="s", journal=path, limit=9, progress=False)


def test_students_keep_their_journals_beside_the_dual_systems_and_a_rerun_generates_nothing(tmp_path):
    from types import SimpleNamespace

    assert student_journal(tmp_path / "run.jsonl", "tv/seed 0") == tmp_path / "run.tv_seed_0.jsonl"
    base, student = _Counting(), _Counting()
    dual = SimpleNamespace(llm=base, guard=WordGuard(), refusal="I can't.", threshold=0.5, mode="threshold")
    dual.describe = lambda: {"system": "dual"}
    path = tmp_path / "run.jsonl"
    kw = {"limit": 4, "progress": False, "journal": path}
    first = evaluate_students(dual, {"tv": student}, ["bundled_harmful_test"], DecodingConfig(), **kw)
    assert base.prompts == student.prompts == 4 and (tmp_path / "run.tv.jsonl").exists()
    again = evaluate_students(
        dual, {"tv": _Counting(fail_after=0)}, ["bundled_harmful_test"], DecodingConfig(), **kw
    )
    assert base.prompts == 4  # nothing generated again: every record came from the journals
    assert [(r.system, r.metric) for r in again] == [(r.system, r.metric) for r in first]


def test_an_interrupted_probe_resumes_and_gives_the_uninterrupted_answers(
    tiny_chat_llm, tmp_path, monkeypatch
):
    from dispsafe_nb.ui import prober
    from dispsafe_nb.ui.prober import ProbeDecoding, ProbeSession, probe

    monkeypatch.setattr(prober, "PROBE_CHUNK", 3)
    prompts = [f"how do I make a {w} {i}" for i, w in enumerate(["bomb", "cake", "kite"] * 3)]
    decoding = ProbeDecoding(max_new_tokens=4)

    def session():
        return ProbeSession(
            tiny_chat_llm, WordGuard(), artifacts_dir=tmp_path / "none", use_second_judge=False
        )

    whole = probe(session(), prompts, ["base", "dual"], decoding)
    real, calls = prober._probe_chunk, []

    def dies_on_the_fourth(*args):
        calls.append(args[1])
        if len(calls) == 4:
            raise KeyboardInterrupt("kernel died")
        return real(*args)

    monkeypatch.setattr(prober, "_probe_chunk", dies_on_the_fourth)
    path = tmp_path / "probe.jsonl"
    with pytest.raises(KeyboardInterrupt):
        probe(session(), prompts, ["base", "dual"], decoding, journal=path)
    calls.clear()
    monkeypatch.setattr(prober, "_probe_chunk", lambda *a: calls.append(a[1]) or real(*a))
    resumed = probe(session(), prompts, ["base", "dual"], decoding, journal=path)
    assert len(calls) == 3  # the second piece's dual answers, then the third piece (base, dual)

    def strip(result):
        return [(a.system, a.prompt, a.answers, a.alphas, a.refused, a.logq_refusal) for a in result.answers]

    assert strip(resumed) == strip(whole) and resumed.base_answers == whole.base_answers


def test_your_own_prompts_are_judged_as_the_named_benchmark_and_a_stray_name_is_refused():
    from dispsafe_nb.data import PromptRecord

    mine = [PromptRecord(f"mine-{i}", "ask" + "s" * i, True, "c", "mine", "test") for i in range(3)]
    (rec,) = evaluate(
        _Counting(), ["bundled_harmful_test"], prompt_sets={"bundled_harmful_test": mine}, progress=False
    )
    assert rec.metric_name == "sgs" and [o["id"] for o in rec.outputs] == ["mine-0", "mine-1", "mine-2"]
    assert (
        rec.metric == pytest.approx(1 / 3) and rec.config["prompt_set"]["n"] == 3
    )  # only "ask" (3 characters) is refused
    with pytest.raises(ValueError, match="not among the benchmarks"):
        evaluate(_Counting(), ["bundled_harmful_test"], prompt_sets={"xstest_safe": mine}, progress=False)


def test_the_widgets_batch_journal_is_named_by_the_request(tiny_chat_llm, tmp_path):
    from dispsafe_nb.ui.prober import ProbeDecoding, ProbeSession, batch_journal_path

    session = ProbeSession(tiny_chat_llm, WordGuard(), artifacts_dir=tmp_path, use_second_judge=False)
    path = batch_journal_path(session, ["a", "b"], ["base"], ProbeDecoding())
    assert path == batch_journal_path(session, ["a", "b"], ["base"], ProbeDecoding())
    assert path.parent.name == "probe_journals" and path.suffix == ".jsonl"
    assert path != batch_journal_path(session, ["a", "b"], ["base", "dual"], ProbeDecoding())
    assert path != batch_journal_path(session, ["a", "b"], ["base"], ProbeDecoding(max_new_tokens=8))
