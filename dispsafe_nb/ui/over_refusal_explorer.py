"""The over-refusal explorer's data: which *safe* prompts each system refuses, by prompt type.

Over-refusal is the paper's sharpest finding (KL-DiSP refuses most of XSTest's safe prompts; TV-DiSP and the
dual system far fewer). Here it is broken down by XSTest's prompt types (homonyms, figurative language, safe
targets, ...) and JailbreakBench's benign categories, from evaluation records: those any notebook or benchmark
wrote under the results folder (each labelled by the file it came from), and the explorer's own, computed for the
systems of a `ProbeSession` and cached in ``results/records/06_probe.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dispsafe_nb import data
from dispsafe_nb.common.paths import results_dir
from dispsafe_nb.core.decoding import PROBING_DECODING, DecodingConfig
from dispsafe_nb.evaluation.benchmarks import benchmark
from dispsafe_nb.evaluation.harness import evaluate_students
from dispsafe_nb.evaluation.records import EvalRecord, read_records, write_records

EXPLORER_BENCHMARKS: dict[str, str] = {
    "xstest_safe": "XSTest safe prompts (ten types)",
    "jbb_benign": "JailbreakBench benign behaviours (ten categories)",
}
# XSTest's type names (its `type` column) in words.
XSTEST_TYPES: dict[str, str] = {
    "homonyms": "homonyms",
    "figurative_language": "figurative language",
    "safe_targets": "safe targets",
    "safe_contexts": "safe contexts",
    "definitions": "definitions",
    "real_group_nons_discr": "real group, nonsense discrimination",
    "nons_group_real_discr": "nonsense group, real discrimination",
    "historical_events": "historical events",
    "privacy_public": "privacy (public figures)",
    "privacy_fictional": "privacy (fictional)",
}
OWN_RECORDS = "06_probe"  # results/records/06_probe.jsonl: the explorer's own records
ALL = "all"


def records_folder() -> Path:
    return results_dir() / "records"


def record_sources(folder: str | Path | None = None) -> dict[str, Path]:
    """Evaluation-record files under the results folder, by source name: ``records/<name>.jsonl`` and the
    benchmarks' ``<name>.records.jsonl``."""
    root = Path(folder) if folder is not None else results_dir()
    found = {p.stem: p for p in sorted((root / "records").glob("*.jsonl"))}
    found |= {p.name.removesuffix(".records.jsonl"): p for p in sorted(root.glob("*.records.jsonl"))}
    return found


def load_sources(
    folder: str | Path | None = None, benchmarks: Sequence[str] = tuple(EXPLORER_BENCHMARKS)
) -> dict[str, list[EvalRecord]]:
    """{source: its records on `benchmarks` that hold per-prompt outputs}; sources without any are left out.
    A damaged file fails with its name and line (`records.read_records`)."""
    out = {}
    for source, path in record_sources(folder).items():
        kept = [r for r in read_records(path) if r.benchmark in benchmarks and r.outputs]
        if kept:
            out[source] = kept
    return out


def _system_key(session: Any, name: str, limit: int | None, seed: int, max_new_tokens: int) -> str:
    """What a record of system `name` depends on: the system itself (its full description: model, guard,
    threshold, the artifact's weights' config), the judge's refusal text, the settings and the split version."""

    system = session.dual_system() if name == "dual" else session.system(name)[0]
    parts = {
        "system": system.describe(),
        "refusal": session.refusal,
        "limit": limit,
        "seed": seed,
        "decoding": DecodingConfig(max_new_tokens, seed=seed).to_dict(),
        "split_version": data.SPLIT_VERSION,
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_records(
    session: Any,
    systems: Sequence[str],
    benchmarks: Sequence[str] = tuple(EXPLORER_BENCHMARKS),
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = PROBING_DECODING.max_new_tokens,
    progress: bool = True,
) -> list[EvalRecord]:
    """Greedy evaluation of `systems` (names of `session`'s systems) on `benchmarks`, judged like every other
    evaluation (each benchmark's string rule recognising the dual system's y_r), the dual system deployed with
    its threshold."""
    greedy = DecodingConfig(max_new_tokens=max_new_tokens, seed=seed)
    students = {name: session.system(name)[0] for name in systems if name not in ("base", "dual")}
    records = evaluate_students(
        session.dual_system(), students, list(benchmarks), greedy, limit=limit, seed=seed, progress=progress
    )
    return [r for r in records if r.system in systems]


def load_or_compute(
    session: Any,
    systems: Sequence[str],
    benchmarks: Sequence[str] = tuple(EXPLORER_BENCHMARKS),
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = PROBING_DECODING.max_new_tokens,
    progress: bool = True,
) -> list[EvalRecord]:
    """The explorer's own records for `systems`: read from ``records/06_probe.jsonl`` when it holds every
    (system, benchmark) for these very systems (a retrained artifact or another guard is another system) at these
    settings, else computed and written there (replacing the file)."""

    path = records_folder() / f"{OWN_RECORDS}.jsonl"
    keys = {name: _system_key(session, name, limit, seed, max_new_tokens) for name in systems}
    if path.is_file():
        cached = {
            (r.system, r.benchmark): r
            for r in read_records(path)
            if r.config.get("explorer_key") == keys.get(r.system)
        }
        if all((s, b) in cached for s in systems for b in benchmarks):
            return [cached[(s, b)] for s in systems for b in benchmarks]
    records = compute_records(session, systems, benchmarks, limit, seed, max_new_tokens, progress)
    for r in records:
        r.config["explorer_key"] = keys[r.system]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.unlink(missing_ok=True)
    write_records(records, tmp)
    tmp.replace(path)
    return records


# ---------------------------------------------------------------------------------------------------------
# From records to tables
# ---------------------------------------------------------------------------------------------------------


def type_label(benchmark: str, category: str) -> str:
    return XSTEST_TYPES.get(category, category) if benchmark == "xstest_safe" else category


def prompt_rows(records: Sequence[EvalRecord]) -> pd.DataFrame:
    """One row per (system, benchmark, prompt): its type, the answer shown, and whether it was refused (a rate
    over the samples for sampled records). Types come from the benchmark's data, matched by prompt id."""
    categories: dict[str, dict[str, str]] = {}
    rows = []
    for r in records:
        if r.benchmark not in categories:
            spec = benchmark(r.benchmark)
            every = data.load_dataset(spec.dataset, split=spec.split)
            categories[r.benchmark] = {p.id: p.category for p in every}
        for o in r.outputs:
            answer = o.get("response", (o.get("samples") or [""])[0])
            refused = float(o["refusal_rate"]) if "refusal_rate" in o else float(bool(o["refused"]))
            category = categories[r.benchmark].get(o["id"], "unknown")
            rows.append(
                {
                    "system": r.system,
                    "benchmark": r.benchmark,
                    "category": category,
                    "label": type_label(r.benchmark, category),
                    "id": o["id"],
                    "prompt": o["prompt"],
                    "answer": answer,
                    "refused": refused,
                }
            )
    columns = ["system", "benchmark", "category", "label", "id", "prompt", "answer", "refused"]
    return pd.DataFrame(rows, columns=columns)


def over_refusal_table(rows: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """Refusal rate per (system, prompt type) on `benchmark`, plus an "all" row per system: columns system,
    category, label, n, refused (prompts refused, fractional for sampled records), rate."""
    part = rows[rows["benchmark"] == benchmark]
    if part.empty:
        raise ValueError(
            f"no records on {benchmark!r}; evaluate a system on it first (explorer.load_or_compute)"
        )
    by_type = part.groupby(["system", "category", "label"], sort=False)["refused"].agg(["count", "sum"])
    by_type = by_type.reset_index().rename(columns={"count": "n", "sum": "refused"})
    overall = part.groupby("system", sort=False)["refused"].agg(["count", "sum"]).reset_index()
    overall = overall.rename(columns={"count": "n", "sum": "refused"}).assign(category=ALL, label=ALL)
    table = pd.concat([by_type, overall], ignore_index=True)
    table["rate"] = table["refused"] / table["n"]
    return table[["system", "category", "label", "n", "refused", "rate"]].reset_index(drop=True)


def refused_prompts(rows: pd.DataFrame, benchmark: str, category: str) -> pd.DataFrame:
    """The prompts of one type (`category`, or "all") that each system refused, with its answer."""
    part = rows[(rows["benchmark"] == benchmark) & (rows["refused"] > 0)]
    if category != ALL:
        part = part[part["category"] == category]
    return part[["system", "label", "prompt", "answer", "refused"]].reset_index(drop=True)


def categories(rows: pd.DataFrame, benchmark: str) -> list[tuple[str, str]]:
    """(label, category) pairs of `benchmark` in the rows, "all" first: the explorer's dropdown."""
    part = rows[rows["benchmark"] == benchmark]
    pairs = list(dict.fromkeys(zip(part["label"], part["category"], strict=True)))
    return [(ALL, ALL), *pairs]
