"""Cache keys follow content: editing one bundled training prompt changes the guard's key *and* the teacher-sample
cache folder built on that guard; a code edit changes the guard's code version
(tests/test_content_hash.py). Stale or unsafe inputs are refused:
teacher-cache entries of the old format, samples without token ids, non-int seeds, and soft prompts trained under
the seeded (leaky) split version. Nothing here loads a model or trains a guard.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dispsafe_nb import data
from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.core.decoding import TEACHER_DECODING, DecodingConfig
from dispsafe_nb.core.llm import Generation
from dispsafe_nb.guards import guard_training
from dispsafe_nb.guards.embedding_guard import EmbeddingGuard, ProbeHead
from dispsafe_nb.guards.guard_training import GuardTrainingConfig, data_role, guard_key, guard_training_data
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.methods import SoftPrompt
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.system.teacher_cache import (
    TEACHER_CACHE_FORMAT,
    TeacherCache,
    TeacherSample,
    TeacherSampleError,
    teacher_cache_key,
    teacher_samples,
)

MODEL = {"name": "stand-in-llm", "hidden_size": 4}


def _needs_mirror() -> None:
    folder = data.mirror_dir()
    if folder is None or not (folder / "MANIFEST.md").is_file():
        pytest.skip("the guard's training data includes public sets: needs the mirror (DISPSAFE_DATA)")


def _embedding_guard(key: str) -> EmbeddingGuard:
    """An EmbeddingGuard whose describe() is the real one (encoders are never called here)."""
    encoder = SimpleNamespace(name="sentence-transformers/all-MiniLM-L6-v2")
    return EmbeddingGuard(encoder, encoder, ProbeHead(4), ProbeHead(4), {"key": key, "role": "teacher"})


def _teacher_folder(guard_description: dict, root: Path) -> Path:
    key = teacher_cache_key(MODEL, guard_description, DEFAULT_REFUSAL, TEACHER_DECODING, 4)
    return TeacherCache(key, root).folder


# ---------------------------------------------------------------------------------------------------------
# editing one bundled prompt changes both keys
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::dispsafe_nb.data.DataWarning")
def test_editing_one_bundled_training_prompt_changes_the_guard_key_and_the_teacher_cache(
    tmp_path, monkeypatch
):
    _needs_mirror()
    bundled = tmp_path / "bundled"
    shutil.copytree(data.DEFAULT_BUNDLED_DIR, bundled)
    monkeypatch.setenv("DISPSAFE_BUNDLED", str(bundled))
    cfg = GuardTrainingConfig()

    before = guard_training_data(cfg, "train")
    key_before = guard_key(cfg, before)
    assert (
        guard_key(cfg) == key_before
    )  # stable while nothing changes (so a difference below means something)

    # A bundled harmful prompt the teacher guard trains on (train split, teacher share, not decontaminated).
    old = next(r.text for r in before["records"] if r.source == "bundled_harmful")
    assert data.assign_split(old) == "train" and data_role(old) == "teacher"
    # Edit it into another prompt that still lands in the train split and the teacher's share, so the key changes
    # because the text changed, not because the prompt left the training data.
    new = next(
        t
        for t in (old.replace(" ", f" {word} ", 1) for word in ("really", "quietly", "simply", "just", "now"))
        if data.assign_split(t) == "train" and data_role(t) == "teacher"
    )
    path = bundled / "harmful.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sum(row["text"] == old for row in rows) == 1
    rows = [{**row, "text": new} if row["text"] == old else row for row in rows]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    after = guard_training_data(cfg, "train")  # no cache clearing: an edited file must be noticed by itself
    assert new in after["prompts"] and old not in after["prompts"]
    key_after = guard_key(cfg, after)
    assert key_after != key_before
    assert guard_training.default_guard_dir(cfg, key_after) != guard_training.default_guard_dir(
        cfg, key_before
    )

    # The teacher samples of a guard trained on the edited data live in another cache folder.
    root = tmp_path / "teacher"
    folder_before = _teacher_folder(_embedding_guard(key_before).describe(), root)
    folder_after = _teacher_folder(_embedding_guard(key_after).describe(), root)
    assert folder_before != folder_after
    assert folder_before == _teacher_folder(_embedding_guard(key_before).describe(), root)  # deterministic


def test_teacher_cache_key_covers_every_setting(tmp_path):
    guard = _embedding_guard("k1").describe()
    base = teacher_cache_key(MODEL, guard, DEFAULT_REFUSAL, TEACHER_DECODING, 4)
    assert base == teacher_cache_key(MODEL, guard, DEFAULT_REFUSAL, TEACHER_DECODING.to_dict(), 4)
    assert base["format"] == TEACHER_CACHE_FORMAT
    variants = [
        teacher_cache_key({**MODEL, "name": "other"}, guard, DEFAULT_REFUSAL, TEACHER_DECODING, 4),
        teacher_cache_key(MODEL, {**guard, "key": "k2"}, DEFAULT_REFUSAL, TEACHER_DECODING, 4),
        teacher_cache_key(MODEL, {**guard, "role": "judge"}, DEFAULT_REFUSAL, TEACHER_DECODING, 4),
        teacher_cache_key(MODEL, guard, "No.", TEACHER_DECODING, 4),
        teacher_cache_key(
            MODEL, guard, DEFAULT_REFUSAL, DecodingConfig(max_new_tokens=8, temperature=0.7), 4
        ),
        teacher_cache_key(MODEL, guard, DEFAULT_REFUSAL, TEACHER_DECODING, 2),
    ]
    folders = {TeacherCache(k, tmp_path).folder for k in [base, *variants]}
    assert len(folders) == 1 + len(variants)


@dataclass
class _StubLLM:
    """Just enough of an LLM for teacher_samples: deterministic 'generations' with ids and finish flags."""

    calls: list = field(default_factory=list)

    def check_prompts(self, prompts, reserve_tokens=0):
        return list(prompts)

    def describe(self):
        return dict(MODEL)

    def generate_detailed(self, prompts, *, decoding, batch_size=16, num_samples=1, per_prompt_seed=False):
        self.calls.append(list(prompts))
        return [
            [Generation(f"answer {j} to {p}", (j + 1, len(p)), j == 0) for j in range(num_samples)]
            for p in prompts
        ]


@dataclass
class _StubGuard:
    key: str

    def prob_safe(self, prompts, responses):
        return torch.full((len(prompts),), 0.25)

    def describe(self):
        return _embedding_guard(self.key).describe()


def test_teacher_samples_cache_under_the_key_of_the_guard(tmp_path):
    """teacher_samples stores its entries in TeacherCache(teacher_cache_key(...)).folder, reuses them for the
    same guard, and samples again (into another folder) for a guard with another content key."""
    decoding = DecodingConfig(max_new_tokens=4, temperature=0.7, top_p=0.95, seed=0)
    prompts = ["first prompt", "second prompt"]
    llm = _StubLLM()
    samples = teacher_samples(
        SafeSystem(llm, _StubGuard("k1")), prompts, 2, decoding, cache_root_dir=tmp_path, progress=False
    )
    assert [s.response_ids for s in samples] == [((1, 12), (2, 12)), ((1, 13), (2, 13))]
    assert all(s.finished == (True, False) and s.alphas == (0.25, 0.25) for s in samples)
    folder = TeacherCache(
        teacher_cache_key(MODEL, _StubGuard("k1").describe(), DEFAULT_REFUSAL, decoding, 2), tmp_path
    ).folder
    assert sorted(p.name for p in folder.glob("*.json") if p.name != "key.json") == sorted(
        TeacherCache({}, tmp_path).path(p).name for p in prompts
    )
    again = teacher_samples(
        SafeSystem(llm, _StubGuard("k1")), prompts, 2, decoding, cache_root_dir=tmp_path, progress=False
    )
    assert again == samples and len(llm.calls) == 1  # read back, ids and flags included
    teacher_samples(
        SafeSystem(llm, _StubGuard("k2")), prompts, 2, decoding, cache_root_dir=tmp_path, progress=False
    )
    assert len(llm.calls) == 2
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 2


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------


def _v1_body(prompt: str) -> dict:
    return {"prompt": prompt, "responses": ["Sure."], "alphas": [0.5], "refusal": DEFAULT_REFUSAL}


@pytest.mark.parametrize("format_field", [None, 1])
def test_a_format_1_teacher_cache_entry_is_recomputed_never_read(tmp_path, format_field):
    cache = TeacherCache({"model": "m"}, tmp_path)
    prompt = "How do I bake bread?"
    path = cache.path(prompt)
    path.parent.mkdir(parents=True)
    body = _v1_body(prompt)
    entry = {"checksum": stable_hash(body), "sample": body}  # a valid v1 entry: texts only, no ids
    if format_field is not None:
        entry["format"] = format_field
    path.write_text(json.dumps(entry), encoding="utf-8")
    with pytest.warns(UserWarning, match=f"format 1, not {TEACHER_CACHE_FORMAT}; recomputing"):
        assert cache.get(prompt) is None
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(prompt) is None  # gone: a plain miss now, no second warning


def test_a_current_format_entry_without_ids_is_corrupt(tmp_path):
    cache = TeacherCache({"model": "m"}, tmp_path)
    prompt = "How do I bake bread?"
    cache.path(prompt).parent.mkdir(parents=True)
    body = _v1_body(prompt)  # claims format 2 but has no ids
    entry = {"format": TEACHER_CACHE_FORMAT, "checksum": stable_hash(body), "sample": body}
    cache.path(prompt).write_text(json.dumps(entry), encoding="utf-8")
    with pytest.warns(UserWarning, match="corrupt"):
        assert cache.get(prompt) is None
    assert not cache.path(prompt).exists()


def test_a_sample_without_ids_cannot_be_cached_and_one_with_ids_round_trips(tmp_path):
    cache = TeacherCache({"model": "m"}, tmp_path)
    bare = TeacherSample("p", ("Sure.",), (0.5,), DEFAULT_REFUSAL)
    with pytest.raises(TeacherSampleError, match="token ids"):
        cache.put(bare)
    assert not cache.path("p").exists()
    full = TeacherSample("p", ("Sure.", "No"), (0.5, 0.9), DEFAULT_REFUSAL, ((7, 8), (9,)), (True, False))
    cache.put(full)
    assert cache.get("p") == full
    assert json.loads(cache.path("p").read_text(encoding="utf-8"))["format"] == TEACHER_CACHE_FORMAT


@pytest.mark.parametrize("bad", ["0", 1.5, True, None])
def test_check_seed_rejects_anything_but_an_int(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        data.check_seed(bad)


def test_check_seed_accepts_ints():
    assert data.check_seed(0) == 0 and data.check_seed(7) == 7


@pytest.mark.parametrize("bad", ["0", 1.5, True])
def test_load_dataset_and_guard_config_reject_a_non_int_seed(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        data.load_dataset("bundled_harmful", seed=bad)
    with pytest.raises(TypeError, match="seed must be an int"):
        GuardTrainingConfig(seed=bad)


def _stand_in_llm(hidden: int = 4) -> SimpleNamespace:
    """What SoftPrompt.load needs of an LLM: its name, hidden size and device."""
    return SimpleNamespace(name="stand-in-llm", hidden_size=hidden, device=torch.device("cpu"))


@pytest.mark.parametrize("split_version", ["v1", None])
def test_a_soft_prompt_trained_under_the_seeded_split_refuses_to_load(tmp_path, split_version):
    metadata = {"training_data_hash": "0123456789abcdef", "objective": "tv"}
    if split_version is not None:
        metadata["split_version"] = split_version
    SoftPrompt(torch.randn(3, 4), model_name="stand-in-llm", metadata=metadata).save(tmp_path / "old")
    with pytest.raises(ArtifactError, match="split leakage"):
        SoftPrompt.load(tmp_path / "old", _stand_in_llm())


def test_a_soft_prompt_of_this_split_version_or_untrained_loads(tmp_path):
    weight = torch.randn(3, 4)
    metadata = {"training_data_hash": "0123456789abcdef", "split_version": data.SPLIT_VERSION}
    SoftPrompt(weight, model_name="stand-in-llm", metadata=metadata).save(tmp_path / "new")
    loaded = SoftPrompt.load(tmp_path / "new", _stand_in_llm())
    assert torch.equal(loaded.W.detach(), weight) and loaded.metadata["split_version"] == data.SPLIT_VERSION
    # An untrained prompt (no training data, so nothing to leak) has no split version and needs none.
    SoftPrompt(weight, model_name="stand-in-llm").save(tmp_path / "init")
    assert torch.equal(SoftPrompt.load(tmp_path / "init", _stand_in_llm()).W.detach(), weight)
