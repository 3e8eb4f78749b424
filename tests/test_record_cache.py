"""Reference records cached once and reused: hits, misses on any change of key, damaged entries recomputed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from dispsafe_nb import data
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.evaluation import generalisation as gen
from dispsafe_nb.evaluation import record_cache
from dispsafe_nb.evaluation.records import EvalRecord


def _records(tag: str = "a") -> list[EvalRecord]:
    outputs = [{"id": "p0", "prompt": "x", "response": tag, "refused": 1.0, "alpha": 0.123456789}]
    config = {
        "judge": {"pivot": False},
        "second_judge": None,
        "decoding": DecodingConfig(max_new_tokens=8).to_dict(),
    }
    record = EvalRecord(
        "dual",
        "jbb_harmful",
        "harmful",
        1,
        1.0,
        "sgs",
        1.0,
        per_form={"short": 0.5},
        outputs=outputs,
        config=config,
    )
    return [record]


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
    assert not list(tmp_path.glob("*.tmp"))


def test_another_key_is_a_miss(tmp_path):
    compute, calls = _counting()
    record_cache.cached_records({"k": 1}, compute, root=tmp_path)
    _, hit = record_cache.cached_records({"k": 2}, compute, root=tmp_path)
    assert not hit and len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "tamper", "other_key", "not_a_dict"])
def test_a_damaged_entry_is_reported_deleted_and_recomputed(tmp_path, damage):
    key = {"k": 1}
    record_cache.store(key, _records("old"), root=tmp_path)
    path = record_cache.cache_path(key, root=tmp_path)
    entry = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "tamper":
        entry["records"][0]["metric"] = 0.0  # a changed number no longer matches the checksum
        path.write_text(json.dumps(entry))
    elif damage == "other_key":
        entry["key"] = {"k": 9}
        path.write_text(json.dumps(entry))
    else:
        path.write_text("[]")
    compute, calls = _counting("new")
    with pytest.warns(UserWarning, match="unusable"):
        records, hit = record_cache.cached_records(key, compute, root=tmp_path)
    assert not hit and len(calls) == 1 and records[0].outputs[0]["response"] == "new"
    assert record_cache.load(key, root=tmp_path) == _records("new")


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(record_cache.json, "dump", disk_full)
    with pytest.raises(OSError, match="No space"):
        record_cache.store({"k": 1}, _records(), root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half-written entry nor a temporary file


class _System:
    def __init__(self, guard_key: str = "g1"):
        self.guard_key = guard_key
        self.llm = SimpleNamespace(device=torch.device("cpu"), model=torch.nn.Linear(1, 1))

    def describe(self):
        return {"system": "dual", "guard": {"key": self.guard_key}, "threshold": 0.5}


def test_the_reference_key_changes_with_system_runtime_decoding_limits_and_prompts(monkeypatch):

    greedy = DecodingConfig(max_new_tokens=8, seed=0)
    limits = {"bundled_forms_test": 3}
    key = gen.reference_key(_System(), limits, greedy)
    assert key == gen.reference_key(_System(), limits, greedy)
    assert key["runtime"]["device"] == "cpu" and key["split_version"] == data.SPLIT_VERSION
    assert key != gen.reference_key(_System("g2"), limits, greedy)  # another guard
    assert key != gen.reference_key(_System(), limits, DecodingConfig(max_new_tokens=9, seed=0))
    assert key != gen.reference_key(_System(), {"bundled_forms_test": 4}, greedy)
    bf16 = _System()
    bf16.llm.model = torch.nn.Linear(1, 1).to(torch.bfloat16)
    assert key != gen.reference_key(bf16, limits, greedy)  # another dtype
    original = gen.benchmark_records

    def relabelled(name, limit=None, seed=0):  # the same texts under other ids
        return [r.__class__(**{**r.__dict__, "id": r.id + "-v2"}) for r in original(name, limit, seed)]

    monkeypatch.setattr(gen, "benchmark_records", relabelled)
    assert key["prompts"] != gen.reference_key(_System(), limits, greedy)["prompts"]


def test_cached_reference_generates_once_then_reuses_and_fresh_regenerates(tmp_path, monkeypatch):
    calls = []

    def fake_base_and_dual(system, benches, **kwargs):
        calls.append((tuple(benches), kwargs["batch_size"], kwargs["seed"]))
        return _records(), {}

    monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path))
    monkeypatch.setattr(gen, "evaluate_base_and_dual", fake_base_and_dual)
    limits = {"bundled_forms_test": 2}
    greedy = DecodingConfig(max_new_tokens=8, seed=0)
    first, hit1 = gen.cached_reference(_System(), limits, greedy, progress=False)
    again, hit2 = gen.cached_reference(_System(), limits, greedy, progress=False)
    assert first == again and (hit1, hit2) == (False, True) and len(calls) == 1
    assert calls[0] == (("bundled_forms_test",), gen.REFERENCE_BATCH_SIZE, 0)
    _, hit3 = gen.cached_reference(_System(), limits, greedy, progress=False, fresh=True)
    assert not hit3 and len(calls) == 2
    assert (
        gen.reference_records(_System(), limits, decoding=greedy, progress=False) == first
    )  # cached by default
    gen.reference_records(_System(), limits, decoding=greedy, progress=False, cache=False)
    assert len(calls) == 3
