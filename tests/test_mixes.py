"""Training mixes at scale: shares, sources, nesting, decontamination and the errors for bad requests."""

from __future__ import annotations

import pytest

from dispsafe_nb import data
from dispsafe_nb.data import mixes
from dispsafe_nb.data.mixes import MixConfig, MixTooLargeError, scale_mix, water_fill

pytestmark = pytest.mark.filterwarnings("ignore::dispsafe_nb.data.DataWarning")


def _mirror_or_skip():
    if data.mirror_dir() is None:
        pytest.skip("the offline mirror of public sets is not here (set DISPSAFE_DATA)")


def test_water_fill_shares_evenly_up_to_each_sources_size():
    assert water_fill(10, {"a": 2, "b": 100, "c": 100}) == {"a": 2, "b": 4, "c": 4}
    assert water_fill(7, {"a": 3, "b": 3, "c": 3}) == {"a": 3, "b": 2, "c": 2}
    assert water_fill(2, {"a": 5, "b": 5, "c": 5}) == {"a": 1, "b": 1, "c": 0}
    sizes = {"a": 7, "b": 40, "c": 13, "d": 1000}
    previous = dict.fromkeys(sizes, 0)
    for need in range(0, 400, 7):
        take = water_fill(need, sizes)
        assert sum(take.values()) == need and all(take[n] <= sizes[n] for n in sizes)
        assert all(take[n] >= previous[n] for n in sizes), need  # a larger mix never takes less
        previous = take


def test_scale_mix_has_its_size_shares_and_every_source():
    _mirror_or_skip()
    cfg = MixConfig(size=5000)
    mix = scale_mix(cfg)
    summary = mixes.mix_summary(mix, cfg)
    assert summary["n"] == 5000 == len({r.id for r in mix})
    assert summary["by_label"] == {"harmful": 1500, "borderline": 500, "benign": 3000}
    assert set(summary["by_source"]) == {n for names in mixes.MIX_SOURCES.values() for n in names}
    assert set(summary["by_form"]) >= set(data.FORMS)
    assert all(r.split == "train" for r in mix)
    data.check_training_texts(r.text for r in mix)  # nothing it holds is an evaluated prompt


def test_smaller_mixes_are_subsets_and_seeds_differ():
    _mirror_or_skip()
    ids = {n: {r.id for r in scale_mix(MixConfig(size=n))} for n in (300, 1200)}
    assert len(ids[300]) == 300 and ids[300] <= ids[1200]
    assert {r.id for r in scale_mix(MixConfig(size=300, seed=1))} != ids[300]
    val = scale_mix(MixConfig(size=200, split="val"))
    assert all(r.split == "val" for r in val) and not {r.id for r in val} & ids[1200]


def test_a_mix_larger_than_the_sources_says_how_many_exist():
    _mirror_or_skip()
    with pytest.raises(
        MixTooLargeError, match=r"needs 6000 harmful prompts but the train splits hold (\d+) \("
    ) as err:
        scale_mix(MixConfig(size=20000))
    largest = int(str(err.value).rsplit(" ", 1)[-1])
    assert 1000 < largest < 20000
    assert len(scale_mix(MixConfig(size=largest))) == largest


def test_group_mix_takes_the_phrasing_forms_in_turn_and_says_what_is_wrong():
    _mirror_or_skip()
    mix = mixes.group_mix(16, 4, 6, seed=0)
    forms = [r.form for r in mix if r.source == "bundled_harmful_forms"]
    # 4 forms prompts in 4 different forms (a prefix of the plain shuffle may repeat one)
    assert len(forms) == 4 and len(set(forms)) == 4
    assert [r.is_harmful for r in mix] == [True] * 16 + [False] * 10
    with pytest.raises(MixTooLargeError, match=r"needs 100000 benign prompts but the train splits hold"):
        mixes.group_mix(1, 1, 100_000)
    with pytest.raises(ValueError, match="non-negative integers"):
        mixes.group_mix(-1, 2, 2)
    with pytest.raises(TypeError, match="seed must be an int"):
        mixes.group_mix(1, 1, 1, seed="0")


def test_round_robin_by_form_keeps_each_forms_order():
    def record(i, form):
        return data.PromptRecord(str(i), f"text {i}", True, "c", "bundled_harmful_forms", "train", form=form)

    records = [record(0, "a"), record(1, "a"), record(2, "b"), record(3, "a"), record(4, "c")]
    assert [r.id for r in mixes._round_robin_by_form(records)] == ["0", "2", "4", "1", "3"]
    assert mixes._round_robin_by_form([]) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be at least 1"),
        ({"harmful_share": 0.8, "borderline_share": 0.3}, "sum to at most 1"),
        ({"split": "test"}, "test prompts are never trained on"),
    ],
)
def test_bad_mix_configs_say_what_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixConfig(**kwargs)


def test_an_evaluated_prompt_in_a_training_mix_is_refused_by_name():
    _mirror_or_skip()
    unsafe = data.load_dataset("xstest_unsafe")[0].text
    forms_test = data.load_dataset("bundled_harmful_forms", split="test")[0].text
    clean = data.load_dataset("bundled_benign", split="train")[0].text
    data.check_training_texts([clean])
    with pytest.raises(data.EvalOnlyError, match=r"2 training prompt\(s\) repeat an evaluated prompt") as err:
        data.check_training_texts([clean, unsafe, forms_test + " Please be quick."])
    assert "xstest" in str(err.value) and "bundled_harmful_forms:test" in str(err.value)


def test_toxigen_statements_become_requests_with_their_label_and_split():
    assert data.toxigen_request("too short") is None
    assert data.toxigen_request(" ".join(["word"] * 41)) is None
    request = data.toxigen_request("Many people in my town are immigrants.")
    assert request in {
        t.format(statement="many people in my town are immigrants") for t in data.TOXIGEN_REQUEST_TEMPLATES
    }
    _mirror_or_skip()
    statements = {r.text: r for r in data.load_dataset("toxigen")}
    requests = data.load_dataset("toxigen_requests")
    assert len(requests) > 400 and {r.is_harmful for r in requests} == {True, False}
    for r in requests:
        source = statements[r.group]
        assert (r.is_harmful, r.split, r.category) == (source.is_harmful, source.split, source.category)
    used = {t for r in requests for t in data.TOXIGEN_REQUEST_TEMPLATES if r.text.startswith(t.split("{")[0])}
    assert used == set(data.TOXIGEN_REQUEST_TEMPLATES)
