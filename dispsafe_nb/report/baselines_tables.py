"""Markdown for notebook 04's baselines findings."""

from __future__ import annotations

import pandas as pd

from dispsafe_nb.study.baselines import best_at_compliance, best_metrics


def baselines_markdown(table: pd.DataFrame, n_seeds: int, min_compliance: float = 0.9) -> str:
    """The notebook's reading of its own table: the best run at compliance ≥ `min_compliance` and the paper's two
    orderings as observed, with the seeds and prompts behind them."""
    best = best_metrics(table, min_compliance)
    sgs = best["best_sgs"]
    top = best_at_compliance(table, min_compliance)
    n = int(table["n_per_set"].min())
    lines = [
        f"*{n_seeds} seed(s), n ≥ {n} prompts per evaluation set: differences of a few points are within noise.*",
        "",
        (
            f"- Best SGS at benign compliance ≥ {min_compliance:.0%}: **{top['system']}** (SGS {top['sgs']:.2f}, "
            f"compliance {top['benign_compliance']:.2f})."
            if top
            else f"- No trained run kept benign compliance ≥ {min_compliance:.0%}."
        ),
    ]
    methods = sorted((k for k in sgs if k.endswith("/tv")), key=lambda k: -sgs[k])
    lines.append(
        "- Methods under TV-DiSP, best first: " + " > ".join(f"{k[:-3]} ({sgs[k]:.2f})" for k in methods)
    )
    objectives = sorted((k for k in sgs if k.startswith("soft_prompt/")), key=lambda k: -sgs[k])
    lines.append(
        "- Objectives with the soft prompt, best first: "
        + " > ".join(f"{k[12:]} ({sgs[k]:.2f})" for k in objectives)
    )
    for key, ok in best["meets_compliance"].items():
        if not ok:
            lines.append(
                f"- {key} kept benign compliance ≥ {min_compliance:.0%} at no learning rate: its best SGS "
                f"({sgs[key]:.2f}) came with compliance {best['best_compliance'][key]:.2f}."
            )
    if _same_rows(table, "tv", "kl"):
        lines.append(
            "- TV-DiSP and KL-DiSP gave the same results at every learning rate: their gradients are equal until "
            "a clip of Eq. 4 engages (q(y) ≥ α or q(y_r) ≥ 1 − α); at this budget the clip changed no answer."
        )
    return "\n".join(lines)


def _same_rows(table: pd.DataFrame, a: str, b: str) -> bool:
    """Do the soft prompt's `a` and `b` runs have identical metrics at every learning rate (and exist)?"""
    cols = ["lr", "seed", "sgs", "over_refusal", "benign_compliance", "verifiable_accuracy"]
    soft = table[table["method"] == "soft_prompt"]
    rows = [
        soft[soft["objective"] == o][cols].sort_values(["lr", "seed"]).reset_index(drop=True) for o in (a, b)
    ]
    return not rows[0].empty and rows[0].equals(rows[1])
