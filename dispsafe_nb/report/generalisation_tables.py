"""Markdown for the generalisation reports: per-set ratios, per-form rows, the variants table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispsafe_nb.evaluation.generalisation import HARMFUL_SETS


def generalisation_markdown(result: dict) -> str:
    """A `benchmarks/generalise.py` result (its JSON) as Markdown: per size and objective, each set's ratio to the
    dual system, then the targets met and missed."""
    m = result["machine"]
    lines = [
        f"One run on {m['processor']} ({m['threads']} threads, {m['device']}), code {m['git_commit'][:7]}, "
        f"{result['wall_s'] / 60:.0f} min in all.",
    ]
    for size, run in result["per_size"].items():
        for objective, o in run["objectives"].items():
            cfg = o["config"]
            lines += [
                "",
                f"**{objective.upper()}-DiSP, mix of {size}** ({run['mix']['by_label']}; teacher samples "
                f"{run['teacher_s'] / 60:.0f} min, training {cfg['steps']} steps of {cfg['batch_size']}×"
                f"{cfg['grad_accum']} in {o['train_s'] / 60:.0f} min, N = {cfg['n_tokens']}, lr {cfg['lr']})",
                "",
                "| set | n | student | dual | student / dual (95 % bootstrap) |",
                "|---|---|---|---|---|",
            ]
            for bench, row in o["comparison"]["sets"].items():
                ratio = (
                    f"{row['ratio']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
                    if row.get("ratio") is not None and row.get("low") is not None
                    else "–"
                )
                lines.append(
                    f"| {bench} ({row['metric']}) | {row['n']} | {row['student']:.2f} | {row['dual']:.2f} | {ratio} |"
                )
            forms = o["comparison"]["per_form"]
            if forms:
                lines.append(
                    "\nPer phrasing form (bundled_forms_test, student / dual): "
                    + ", ".join(
                        f"{f} {v['ratio']:.2f} (n = {v['n']})"
                        if v["ratio"] is not None
                        else f"{f} – (n = {v['n']})"
                        for f, v in forms.items()
                    )
                )
            met = [k for k, t in o["targets"].items() if t["met"]]
            missed = [
                f"{k} {'–' if t['value'] is None else format(t['value'], '.2f')} "
                f"(target {t['direction']} {t['threshold']:.2f})"
                for k, t in o["targets"].items()
                if not t["met"]
            ]
            lines.append(f"\nTargets met: {', '.join(met) or 'none'}. Missed: {'; '.join(missed) or 'none'}.")
    return "\n".join(lines)


SHORT_NAMES = {
    "jbb_harmful": "JBB",
    "xstest_unsafe": "XSTest unsafe",
    "bundled_forms_test": "forms",
    "jailbreak_wrapped": "jailbreak",
    "advbench_test": "AdvBench",
}


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def variant_rows(results: Mapping[str, dict]) -> list[dict[str, Any]]:
    """One row per (result, size, objective): what was trained and how close it came to each target. Ratios and
    rates are numbers; `over_refusal` and `targets_met` are (student, dual) and (met, of) pairs."""
    rows = []
    for name, result in results.items():
        if "per_size" not in result or "config" not in result:
            raise ValueError(f"{name} is not a benchmarks/generalise.py result (no per_size/config)")
        mix = result["config"]
        for size, run in result["per_size"].items():
            for objective, o in run["objectives"].items():
                cfg, sets = o["config"], o["comparison"]["sets"]
                row: dict[str, Any] = {
                    "result": name,
                    "objective": objective,
                    "teacher α": cfg.get("teacher_alpha", "soft"),
                    "prompts": int(size),
                    "shares": (mix["harmful_share"], mix["borderline_share"]),
                    "N": cfg["n_tokens"],
                    "lr": cfg["lr"],
                    "steps": (cfg["steps"], cfg["batch_size"] * cfg["grad_accum"]),
                    "seed": cfg["seed"],
                    "train_min": round(o["train_s"] / 60),
                }
                row.update({SHORT_NAMES[b]: sets[b]["ratio"] for b in HARMFUL_SETS if b in sets})
                if "xstest_safe" in sets:
                    row["over_refusal"] = (sets["xstest_safe"]["student"], sets["xstest_safe"]["dual"])
                if "alpaca_test" in sets:
                    row["Alpaca"] = sets["alpaca_test"]["student"]
                row["targets_met"] = (sum(t["met"] for t in o["targets"].values()), len(o["targets"]))
                rows.append(row)
    return rows


_HEADERS = {
    "shares": "harmful/borderline share",
    "steps": "steps × batch",
    "over_refusal": "XSTest-safe over-refusal (dual)",
    "targets_met": "targets met",
}
_CELLS = {
    "shares": lambda v: f"{v[0]:.2f}/{v[1]:.2f}",
    "lr": lambda v: f"{v:g}",
    "steps": lambda v: f"{v[0]} × {v[1]}",
    "over_refusal": lambda v: f"{_num(v[0])} ({_num(v[1])})",
    "targets_met": lambda v: f"{v[0]}/{v[1]}",
    "Alpaca": _num,
    **{short: _num for short in SHORT_NAMES.values()},
}


def variants_markdown(results: Mapping[str, dict]) -> str:
    """Several `benchmarks/generalise.py` results side by side: each variant's ratio to the dual system per harmful
    set, over-refusal, compliance and the number of targets met."""
    rows = variant_rows(results)
    if not rows:
        raise ValueError("no trained students in these results")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [
        "| " + " | ".join(_HEADERS.get(c, c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [_CELLS.get(c, str)(row[c]) if c in row else "–" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
