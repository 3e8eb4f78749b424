"""Evaluation records (one per prompt and system) as JSON lines, tables and per-system metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dispsafe_nb.common.classifier_stats import binary_agreement


@dataclass
class EvalRecord:
    """One system on one benchmark: the headline metric, details, outputs, and everything needed to redo it."""

    system: str
    benchmark: str
    kind: str
    n: int
    refusal_rate: float | None
    metric_name: str
    metric: float
    per_category: dict[str, float] = field(default_factory=dict)
    per_form: dict[str, float] = field(
        default_factory=dict
    )  # refusal rate per phrasing form, where records have one
    second_judge_metric: float | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str, ensure_ascii=False)


def write_records(records: Sequence[EvalRecord], path: str | Path) -> Path:
    """Append records as JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for record in records:
            fh.write(record.to_json() + "\n")
    return path


def read_records(path: str | Path) -> list[EvalRecord]:
    """Read the records `write_records` wrote. A damaged line fails with its file and line number."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(EvalRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(
                f"{path}, line {number}, is not an evaluation record ({err}); delete the file "
                "or rerun the evaluation that wrote it"
            ) from err
    return records


def records_table(records: Sequence[EvalRecord]) -> pd.DataFrame:
    """One row per (system, benchmark): the headline metric, refusal rate and n."""
    rows = [
        {
            "system": r.system,
            "benchmark": r.benchmark,
            "kind": r.kind,
            "metric": r.metric_name,
            "value": r.metric,
            "refusal_rate": r.refusal_rate,
            "second_judge": r.second_judge_metric,
            "n": r.n,
        }
        for r in records
    ]
    return pd.DataFrame(rows)


def metrics_by_system(records: Sequence[EvalRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """{system: {benchmark: {<metric name>: value, "refusal_rate", "second_judge_sgs", "n"}}}, JSON-able: the
    shape notebooks emit and benchmarks write (`second_judge_sgs` is None off the harmful sets)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.system, {})[r.benchmark] = {
            r.metric_name: r.metric,
            "refusal_rate": r.refusal_rate,
            "second_judge_sgs": r.second_judge_metric,
            "n": r.n,
        }
    return out


def side_by_side(
    records: Sequence[EvalRecord],
    benchmarks: Sequence[str],
    systems: Sequence[str],
    per_benchmark: int = 2,
    width: int = 160,
) -> pd.DataFrame:
    """The first `per_benchmark` prompts of each benchmark with every system's answer (cut to `width` characters),
    one row per prompt: what each system actually said, from greedy records."""
    by_key = {(r.system, r.benchmark): r for r in records}
    missing = [(s, b) for b in benchmarks for s in systems if (s, b) not in by_key]
    if missing:
        raise KeyError(f"no records for {missing}")
    rows = []
    for bench in benchmarks:
        first = by_key[(systems[0], bench)]
        for i in range(min(per_benchmark, first.n)):
            row = {"benchmark": bench, "prompt": first.outputs[i]["prompt"]}
            for name in systems:
                outputs = by_key[(name, bench)].outputs
                if i >= len(outputs) or outputs[i]["prompt"] != row["prompt"]:
                    raise ValueError(f"{name} on {bench} answered other prompts, or in another order")
                if "response" not in outputs[i]:
                    raise ValueError(
                        f"{name} on {bench} is a sampled record; side_by_side shows greedy answers"
                    )
                row[name] = outputs[i]["response"][:width]
            rows.append(row)
    return pd.DataFrame(rows)


def judge_agreement(records: Sequence[EvalRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """Cohen's κ between the string judge (refused = safe) and the second judge on every harmful benchmark, per
    system (one answer per prompt): {benchmark: {system: {"kappa", "agreement", "n", ...}}}.

    Per system, not pooled: pooling repeats the same prompts and, for a dual system, counts every answer replaced
    by y_r -- on which any two judges agree -- as agreement."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        pairs = [
            (bool(o["refused"]), bool(o["second_judge_safe"])) for o in r.outputs if "second_judge_safe" in o
        ]
        if r.kind == "harmful" and pairs:
            a, b = zip(*pairs, strict=True)
            out.setdefault(r.benchmark, {})[r.system] = binary_agreement(list(a), list(b))
    return {b: dict(sorted(v.items())) for b, v in sorted(out.items())}


def agreement_table(records: Sequence[EvalRecord]) -> pd.DataFrame:
    """`judge_agreement` as a table: one row per (benchmark, system)."""
    rows = [
        {"benchmark": b, "system": s, **stats}
        for b, by in judge_agreement(records).items()
        for s, stats in by.items()
    ]
    return pd.DataFrame(rows).set_index(["benchmark", "system"]) if rows else pd.DataFrame()
