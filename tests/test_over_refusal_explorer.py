"""The over-refusal explorer's tables, the prober's input checks and artifact discovery, without loading a model."""

from __future__ import annotations

import json

import pytest
import torch

from dispsafe_nb import data, plots
from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.evaluation.benchmark_metrics import score_responses
from dispsafe_nb.evaluation.records import EvalRecord, read_records, write_records
from dispsafe_nb.methods import SoftPrompt, artifact_kind, load_method
from dispsafe_nb.ui import over_refusal_explorer as explorer
from dispsafe_nb.ui.prober import (
    ProbeDecoding,
    ProbeInputError,
    ProbeResult,
    SystemAnswer,
    discover_systems,
    parse_prompts,
)
from dispsafe_nb.ui.prompt_presets import presets
from dispsafe_nb.ui.widgets import OverRefusalExplorer, answers_html, summary_html

REFUSAL = "I'm sorry, but I can't help with that request."


def _xstest_records() -> list[EvalRecord]:
    """Two systems on 20 XSTest safe prompts: 'careful' refuses every homonym and every third other prompt."""
    prompts = data.load_dataset("xstest_safe", limit=20, seed=0)
    careful = [
        REFUSAL if (p.category == "homonyms" or i % 3 == 0) else "Sure: here is how."
        for i, p in enumerate(prompts)
    ]
    helpful = ["Sure: here is how."] * len(prompts)
    return [
        score_responses("careful", "xstest_safe", prompts, careful, refusal_text=REFUSAL),
        score_responses("helpful", "xstest_safe", prompts, helpful, refusal_text=REFUSAL),
    ]


def test_over_refusal_table_counts_types_and_the_total():
    records = _xstest_records()
    rows = explorer.prompt_rows(records)
    table = explorer.over_refusal_table(rows, "xstest_safe")
    prompts = data.load_dataset("xstest_safe", limit=20, seed=0)
    for system, record in (("careful", records[0]), ("helpful", records[1])):
        mine = table[table.system == system]
        overall = mine[mine.category == "all"].iloc[0]
        assert overall.n == 20 and overall.rate == pytest.approx(record.refusal_rate)
        typed = mine[mine.category != "all"]
        assert typed.n.sum() == 20 and typed.refused.sum() == pytest.approx(overall.refused)
        assert set(typed.category) == {p.category for p in prompts}
    homonyms = table[(table.system == "careful") & (table.category == "homonyms")]
    if len(homonyms):
        assert homonyms.rate.iloc[0] == 1.0
    assert table[table.system == "helpful"].rate.max() == 0.0
    labels = dict(zip(table.category, table.label, strict=True))
    assert all(labels[c] == explorer.XSTEST_TYPES[c] for c in labels if c != "all")


def test_refused_prompts_lists_exactly_the_refusals_of_a_type():
    rows = explorer.prompt_rows(_xstest_records())
    every = explorer.refused_prompts(rows, "xstest_safe", "all")
    assert set(every.system) == {"careful"} and (every.answer == REFUSAL).all()
    category = rows.category.iloc[0]
    of_type = explorer.refused_prompts(rows, "xstest_safe", category)
    assert (of_type.label == explorer.type_label("xstest_safe", category)).all()
    assert len(of_type) == ((rows.category == category) & (rows.refused > 0)).sum()
    assert explorer.categories(rows, "xstest_safe")[0] == ("all", "all")
    with pytest.raises(ValueError, match="no records on 'jbb_benign'"):
        explorer.over_refusal_table(rows, "jbb_benign")


def test_sampled_records_count_refusal_rates():
    prompts = data.load_dataset("xstest_safe", limit=3, seed=0)
    from dispsafe_nb.evaluation.benchmark_metrics import score_samples

    record = score_samples("s", "xstest_safe", prompts, [[REFUSAL, "Sure."]] * 3, refusal_text=REFUSAL)
    table = explorer.over_refusal_table(explorer.prompt_rows([record]), "xstest_safe")
    assert table[table.category == "all"].rate.iloc[0] == pytest.approx(0.5)


def test_records_round_trip_and_damage_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("DISPSAFE_RESULTS", str(tmp_path))
    records = _xstest_records()
    path = write_records(records, tmp_path / "records" / "mine.jsonl")
    assert [r.to_json() for r in read_records(path)] == [r.to_json() for r in records]
    write_records(records, tmp_path / "bench.records.jsonl")
    assert set(explorer.load_sources()) == {"mine", "bench"}
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"mine\.jsonl, line 3"):
        explorer.load_sources()


def test_explorer_widget_renders_types_and_refusals():
    tool = OverRefusalExplorer({"hand-made": _xstest_records()}, {"dual": 0.359})
    assert tool.benchmark.value == "xstest_safe" and tool.category.value == "all"
    assert "careful" in tool.refused.value and "helpful" not in tool.refused.value
    assert {t.name for t in tool.last_figure.data} >= {"careful", "helpful", "dual (paper)"}
    tool.category.value = next(c for _, c in tool.category.options if c != "all")
    assert "refused" in tool.refused.value or "No system refused" in tool.refused.value
    with pytest.raises(ValueError, match="no evaluation records"):
        OverRefusalExplorer({})


def test_over_refusal_figure_puts_the_paper_beside_ours():
    table = explorer.over_refusal_table(explorer.prompt_rows(_xstest_records()), "xstest_safe")
    fig = plots.over_refusal_by_type_figure(table, {"dual": 0.359, "kl-disp": 0.846})
    names = [t.name for t in fig.data]
    assert "dual (paper)" in names and "kl-disp (paper)" in names
    paper = next(t for t in fig.data if t.name == "kl-disp (paper)")
    assert list(paper.y) == [0.846] and list(paper.x) == ["paper"]


# ---- the prober's inputs ------------------------------------------------------------------------------------


def test_probe_decoding_rejects_bad_settings_with_what_to_do():
    assert ProbeDecoding().to_decoding().greedy
    assert ProbeDecoding("sampled", temperature=0.7, k=4).to_decoding().temperature == 0.7
    for kwargs, message in [
        ({"mode": "beam"}, "greedy' or 'sampled"),
        ({"k": 3}, "set k = 1"),
        ({"mode": "sampled", "temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"mode": "sampled", "k": 0}, "k samples"),
    ]:
        with pytest.raises(ProbeInputError, match=message):
            ProbeDecoding(**kwargs)


def test_parse_prompts():
    assert parse_prompts("one\n\n  two  \n") == ["one", "two"]
    assert parse_prompts(["a b", "c"]) == ["a b", "c"]
    for bad in ("", "  \n ", []):
        with pytest.raises(ProbeInputError, match="empty"):
            parse_prompts(bad)
    with pytest.raises(ProbeInputError, match="non-empty"):
        parse_prompts(["fine", "  "])


def test_presets_come_from_test_splits_and_mark_harmful_sets():
    sets = presets(per_set=5)
    by_label = {p.label: p for p in sets}
    assert "⚠ harmful · AdvBench test" in by_label and "Alpaca test" in by_label
    assert any(label.startswith("XSTest safe · homonyms") for label in by_label)
    for p in sets:
        assert p.label.startswith("⚠ harmful") == p.harmful and 1 <= len(p.prompts) <= 5
    test_texts = {r.text for r in data.load_dataset("advbench", split="test")}
    assert set(by_label["⚠ harmful · AdvBench test"].prompts) <= test_texts


def _save_soft_prompt(folder, hidden: int, model: str) -> None:
    SoftPrompt(torch.zeros(2, hidden), model_name=model).save(folder)


def test_systems_are_discovered_by_artifact_kind(tmp_path):
    _save_soft_prompt(tmp_path / "a_student", 8, "some-model")
    (tmp_path / "nested" / "lora").mkdir(parents=True)
    (tmp_path / "nested" / "lora" / "config.json").write_text(json.dumps({"kind": "lora_adapter"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{oops")
    specs = {s.name: s for s in discover_systems(tmp_path)}
    assert list(specs)[:2] == ["base", "dual"]
    assert specs["a_student"].kind == "soft_prompt" and specs["a_student"].loadable
    assert not specs["nested/lora"].loadable and "lora_adapter" in specs["nested/lora"].note
    assert "broken" not in specs  # no readable kind: not an artifact
    assert (
        artifact_kind(tmp_path / "a_student") == "soft_prompt" and artifact_kind(tmp_path / "broken") is None
    )
    assert [s.name for s in discover_systems(tmp_path / "missing")] == ["base", "dual"]
    with pytest.raises(ArtifactError, match="no loader is registered"):
        load_method(tmp_path / "nested" / "lora", llm=None)


# ---- rendering ----------------------------------------------------------------------------------------------


def _result() -> ProbeResult:
    result = ProbeResult(["p <b>1</b>"], ["base", "dual", "gone"], ProbeDecoding(), REFUSAL)
    verdicts = {"JBB strings": [False], "XSTest strings": [False], "second judge": [True]}
    result.answers = [
        SystemAnswer("base", "p <b>1</b>", ["Sure <i>"], [0.9], verdicts, [False], 0.5, logq_refusal=-30.0),
        SystemAnswer(
            "dual",
            "p <b>1</b>",
            [REFUSAL],
            [0.99],
            verdicts,
            [True],
            0.6,
            llm_answers=["bad"],
            llm_alphas=[0.1],
        ),
    ]
    result.errors["gone"] = "ArtifactError: trained on model 'x' but loaded onto 'y'"
    return result


def test_answers_html_shows_every_system_escaped_with_its_numbers_or_error():
    page = answers_html(_result())
    for text in ("base", "dual", "gone", "trained on model", "α = 0.900", "replaced", "α = 0.100"):
        assert text in page
    assert "<i>" not in page.split("Sure")[1][:10] and "&lt;b&gt;1&lt;/b&gt;" in page  # user text is escaped
    assert "9.36e-14" in page  # exp(-30)
    summary = summary_html(_result())
    assert "refusal_rate" in summary and "gone" in summary


def test_toy_explorer_reruns_the_toy_when_a_slider_moves():
    from dispsafe_nb.ui.widgets import ToyExplorer

    toy = ToyExplorer(steps=4)
    first = toy.last_result
    assert first["config"]["alpha_safe"] == 0.95 and "KL − TV" in toy.summary.value
    toy.alpha_safe.value = 0.6
    assert toy.last_result is not first and toy.last_result["config"]["alpha_safe"] == 0.6
    toy.feature_noise.value = 0.2
    assert toy.last_result["config"]["feature_noise"] == 0.2
    assert len(toy.last_figure.data) == 6  # TV, KL and teacher, on benign and on harmful prompts
