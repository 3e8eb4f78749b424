"""Reference records cached once and reused: hits, misses on any change of key, damaged entries recomputed."""

from __future__ import annotations

import json

import pytest

from dispsafe_nb import generalisation as gen
from dispsafe_nb import record_cache
from dispsafe_nb.evaluate import EvalRecord
from dispsafe_nb.models import DecodingConfig


def _records(tag: str = "a") -> list[EvalRecord]:
    outputs = [{"id": "p0", "prompt": "x", "response": tag, "refused": 1.0}]
    return [
        EvalRecord(
            "dual", "jbb_harmful", "harmful", 1, 1.0, "sgs", 1.0, per_form={"short": 0.5}, outputs=outputs
        )
    ]


def _counting(tag: str = "a"):
    calls = []

    def compute():
        calls.append(1)
        return _records(tag)

    return compute, calls


def test_records_are_computed_once_and_come_back_equal(tmp_path):
    compute, calls = _counting()
    first, hit1 = record_cache.cached_records({"k": 1}, compute, root=tmp_path)
    second, hit2 = record_cache.cached_records({"k": 1}, compute, root=tmp_path)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert second == first == _records()


def test_another_key_is_a_miss(tmp_path):
    compute, calls = _counting()
    record_cache.cached_records({"k": 1}, compute, root=tmp_path)
    _, hit = record_cache.cached_records({"k": 2}, compute, root=tmp_path)
    assert not hit and len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "tamper", "other_key"])
def test_a_damaged_entry_is_reported_deleted_and_recomputed(tmp_path, damage):
    key = {"k": 1}
    path = record_cache.store(key, _records("old"), root=tmp_path)
    entry = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "tamper":
        entry["records"][0]["metric"] = 0.0  # a changed number no longer matches the checksum
        path.write_text(json.dumps(entry))
    else:
        entry["key"] = {"k": 9}
        path.write_text(json.dumps(entry))
    compute, calls = _counting("new")
    with pytest.warns(UserWarning, match="unusable"):
        records, hit = record_cache.cached_records(key, compute, root=tmp_path)
    assert not hit and len(calls) == 1 and records[0].outputs[0]["response"] == "new"
    assert record_cache.load(key, root=tmp_path) == _records("new")


class _System:
    def __init__(self, guard_key: str = "g1"):
        self.guard_key = guard_key

    def describe(self):
        return {"system": "dual", "guard": {"key": self.guard_key}, "threshold": 0.5}


def test_the_reference_key_changes_with_system_decoding_limits_and_prompts():
    greedy = DecodingConfig(max_new_tokens=8, seed=0)
    limits = {"bundled_forms_test": 3}
    key = gen.reference_key(_System(), limits, greedy)
    assert key == gen.reference_key(_System(), limits, greedy)
    assert key != gen.reference_key(_System("g2"), limits, greedy)  # another guard
    assert key != gen.reference_key(_System(), limits, DecodingConfig(max_new_tokens=9, seed=0))
    assert key != gen.reference_key(_System(), {"bundled_forms_test": 4}, greedy)
    assert (
        key["prompts"]["bundled_forms_test"]
        != gen.reference_key(_System(), {"bundled_forms_borderline_test": 3}, greedy)["prompts"][
            "bundled_forms_borderline_test"
        ]
    )
    assert len(key["code"]) == 16


def test_reference_records_generate_once_then_reuse(tmp_path, monkeypatch):
    from dispsafe_nb import evaluate

    calls = []

    def fake_base_and_dual(system, benches, **kwargs):
        calls.append(tuple(benches))
        return _records(), {}

    monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path))
    monkeypatch.setattr(evaluate, "evaluate_base_and_dual", fake_base_and_dual)
    limits = {"bundled_forms_test": 2}
    greedy = DecodingConfig(max_new_tokens=8, seed=0)
    first = gen.reference_records(_System(), limits, decoding=greedy, progress=False)
    again = gen.reference_records(_System(), limits, decoding=greedy, progress=False)
    assert first == again and len(calls) == 1
    gen.reference_records(_System(), limits, decoding=greedy, progress=False, cache=False)
    assert len(calls) == 2
    assert list((tmp_path / "records").glob("*.json"))
