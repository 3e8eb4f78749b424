"""Acceptance test of the split-leakage fix: over seeds 0-4, no prompt any consumer evaluates on appears in any
text any consumer trains on (teacher guard, judge guard, the distillation mixes of notebooks 01/03 and of
benchmarks/distill.py; guard response examples and AdvBench targets included), exactly after normalisation or
as a near-duplicate; and the teacher's and the judge's training texts are disjoint.

Nothing is trained here: `guard_training_data` and `training_mix` only select texts (a few seconds in all).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from dispsafe_nb import data
from dispsafe_nb.data.mixes import MixConfig, scale_mix
from dispsafe_nb.data.near_duplicates import NEAR_DUPLICATE_THRESHOLD, NearDuplicateIndex
from dispsafe_nb.evaluation.benchmarks import BENCHMARKS, benchmark_records
from dispsafe_nb.guards.guard_training import JUDGE_GUARD_CONFIG, GuardTrainingConfig, guard_training_data
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.training.examples import training_mix

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(5)
# Sets that are evaluated whole, whatever the benchmark list holds (xstest_safe is only a view of xstest).
EVAL_ONLY_SETS = ("xstest", "jbb_harmful", "jbb_benign")

pytestmark = pytest.mark.filterwarnings(
    "ignore::dispsafe_nb.data.DataWarning"
)  # "dropped n texts" is expected


@pytest.fixture(scope="module", autouse=True)
def mirror():
    folder = data.mirror_dir()
    if folder is None or not (folder / "MANIFEST.md").is_file():
        pytest.skip("needs the public dataset mirror (DISPSAFE_DATA)")
    return folder


def notebook_parameters(name: str) -> dict:
    """The values of a notebook's `parameters`-tagged cell (plain assignments), as the notebook runs them."""
    nb = json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name} must have one parameters cell"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)  # noqa: S102 - the repo's own notebook, plain assignments
    return namespace


def benchmark_mix_default() -> tuple[int, int, int]:
    source = (REPO / "benchmarks" / "distill.py").read_text(encoding="utf-8")
    match = re.search(r'"--mix",\s*default="(\d+),(\d+),(\d+)"', source)
    assert match, "benchmarks/distill.py lost its --mix default"
    return tuple(int(v) for v in match.groups())


# ---------------------------------------------------------------------------------------------------------
# what is evaluated, what is trained on
# ---------------------------------------------------------------------------------------------------------


def evaluated_records(seed: int) -> dict[str, list[data.PromptRecord]]:
    """Every record an evaluation may score under `seed`: each benchmark's whole split (a superset of every
    `limit`-sized sample of it) and the whole evaluation-only sets."""
    out = {}
    for name, spec in BENCHMARKS.items():
        whole = data.load_dataset(spec.dataset, split=spec.split, seed=seed, download=False)
        # What the evaluations actually score (limit=None: the default, e.g. 200 Alpaca prompts; 30/20: notebook
        # 03; 60/24: benchmarks/distill.py) is always a subset of the whole split.
        ids = {r.id for r in whole}
        for limit in (None, 20, 24, 30, 60, 100):
            assert {r.id for r in benchmark_records(name, limit=limit, seed=seed)} <= ids, (name, limit)
        out[name] = whole
    for name in EVAL_ONLY_SETS:
        out[name] = data.load_dataset(name, seed=seed, download=False)
    return out


def training_texts(seed: int) -> dict[str, dict[str, list[str]]]:
    """Every text a consumer trains (or tunes) on under `seed`: {consumer: {"prompts": [...], "responses": [...]}}."""
    nb03 = notebook_parameters("03_distill.ipynb")
    n_val = nb03["N_VAL"]
    mixes = {
        "notebook03_train": training_mix(
            nb03["N_HARMFUL"], nb03["N_BENIGN"], nb03["N_BORDERLINE"], seed=seed
        ),
        "notebook03_val": training_mix(n_val, n_val, n_val, seed=seed, split="val"),
        "notebook01_train": training_mix(24, 24, 16, seed=seed),
        "benchmark_distill_train": training_mix(*benchmark_mix_default(), seed=seed),
        # benchmarks/generalise.py's default mix at the paper's scale (the largest size of its curve)
        "benchmark_generalise_train": scale_mix(MixConfig(size=5000, seed=seed)),
    }
    out = {
        name: {"prompts": [r.text for r in records], "responses": [DEFAULT_REFUSAL]}  # y_r is a target too
        for name, records in mixes.items()
    }
    for name, cfg in {
        "teacher_guard": GuardTrainingConfig(seed=seed),
        "judge_guard": replace(JUDGE_GUARD_CONFIG, seed=seed),
    }.items():
        train = guard_training_data(cfg, "train")
        data.assert_trainable(train["records"])
        out[name] = {"prompts": train["prompts"], "responses": train["responses"]}
    return out


@pytest.fixture(scope="module")
def by_seed():
    return {seed: (evaluated_records(seed), training_texts(seed)) for seed in SEEDS}


# ---------------------------------------------------------------------------------------------------------
# the acceptance test
# ---------------------------------------------------------------------------------------------------------


def test_the_consumers_see_real_data(by_seed):
    """Guard against a vacuous pass: every consumer trains on something and every benchmark has prompts."""
    for evaluated, trained in by_seed.values():
        assert all(evaluated.values()), {n: len(r) for n, r in evaluated.items()}
        for consumer, texts in trained.items():
            assert texts["prompts"], consumer
        # The guards' response examples include AdvBench's "Sure, here is ..." targets (compliant answers).
        for guard in ("teacher_guard", "judge_guard"):
            assert any(t.startswith("Sure, here is") for t in trained[guard]["responses"])
    # The mixes do change with the seed (so five seeds really are five different training sets).
    mixes = {seed: tuple(by_seed[seed][1]["notebook03_train"]["prompts"]) for seed in SEEDS}
    assert len(set(mixes.values())) == len(SEEDS)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_evaluated_prompt_in_any_training_text(by_seed, seed):
    evaluated, trained = by_seed[seed]
    # Evaluated prompts of *every* seed: a consumer trained with one seed is evaluated with another.
    eval_texts = {r.text for ev, _ in by_seed.values() for records in ev.values() for r in records}
    eval_norm = {data.normalize_text(t) for t in eval_texts}
    index = NearDuplicateIndex({"evaluated": eval_texts}, NEAR_DUPLICATE_THRESHOLD)
    assert len(index) > 1000
    exact, near = [], []
    for consumer, texts in trained.items():
        for kind, items in texts.items():
            for text in items:
                if data.normalize_text(text) in eval_norm:
                    exact.append((consumer, kind, text))
                elif index.leaks(text):
                    near.append((consumer, kind, text))
    assert not exact, f"{len(exact)} training text(s) equal an evaluated prompt: {exact[:5]}"
    assert not near, f"{len(near)} training text(s) nearly contain an evaluated prompt: {near[:5]}"


def test_teacher_and_judge_guards_share_no_training_text(by_seed):
    """Disjoint over all seeds together (the real teacher uses seed 0, the real judge seed 1)."""
    for kind in ("prompts", "responses"):
        teacher = {data.normalize_text(t) for _, tr in by_seed.values() for t in tr["teacher_guard"][kind]}
        judge = {data.normalize_text(t) for _, tr in by_seed.values() for t in tr["judge_guard"][kind]}
        assert teacher and judge
        assert not teacher & judge, (kind, sorted(teacher & judge)[:5])


def test_evaluated_records_and_their_splits_do_not_depend_on_the_seed(by_seed):
    reference = {name: {r.id: (r.text, r.split) for r in records} for name, records in by_seed[0][0].items()}
    for seed in SEEDS:
        evaluated, _ = by_seed[seed]
        for name, records in evaluated.items():
            assert {r.id: (r.text, r.split) for r in records} == reference[name], (name, seed)
            for r in records:
                assert r.split == "test", r.id
                if r.source not in data.EVAL_ONLY:  # evaluation-only sets are "test" whatever their hash says
                    # (twins of the *_forms sets share their pair's split: its group is hashed, not its text)
                    assert data.assign_split(r.group or r.text) == "test", r.id
    # The split of a prompt is a function of its text alone: the same record gets the same split under every
    # seed in every trainable set, not just the benchmarks.
    for name in sorted(data.TRAINABLE):
        splits = {s: {r.id: r.split for r in data.load_dataset(name, seed=s, download=False)} for s in SEEDS}
        assert all(splits[s] == splits[0] for s in SEEDS), name


def test_advbench_test_split_under_seed_0_shares_nothing_with_train_under_seed_1():
    """Finding 1: v1 hashed the sampling seed into the split, so evaluation (seed 0) and the judge guard (seed 1)
    saw different partitions of AdvBench: prompts of one caller's test split were in the other's train split."""
    test = data.load_dataset("advbench", split="test", seed=0)
    train = data.load_dataset("advbench", split="train", seed=1)
    assert len(test) > 50 and len(train) > 300
    overlap = {data.normalize_text(r.text) for r in test} & {data.normalize_text(r.text) for r in train}
    assert not overlap, sorted(overlap)[:5]
