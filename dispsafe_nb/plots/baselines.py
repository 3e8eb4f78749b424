"""Figures of notebook 04: the baselines' safety-usefulness trade-off."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dispsafe_nb.plots.common import PALETTE

USEFULNESS_LABELS = {
    "benign_compliance": "benign compliance (answered, benign sets)",
    "verifiable_accuracy": "verifiable-instruction accuracy",
    "over_refusal": "over-refusal (refused, borderline-safe sets)",
}
_REFERENCE_SYMBOLS = {"base": "x", "dual": "star"}


def tradeoff_scatter(table: pd.DataFrame, usefulness: str = "benign_compliance") -> go.Figure:
    """SGS (mean over the harmful sets) against a usefulness measure: one point per run, coloured by
    (method, objective); the base model and the dual system marked; hover shows each run's config."""
    if usefulness not in USEFULNESS_LABELS:
        raise ValueError(f"usefulness must be one of {sorted(USEFULNESS_LABELS)}, not {usefulness!r}")
    fig = go.Figure()
    groups = table.assign(group=table["method"] + " / " + table["objective"].fillna("—"))
    for i, (group, rows) in enumerate(groups.groupby("group", sort=False)):
        reference = rows["system"].iloc[0] if rows["system"].iloc[0] in _REFERENCE_SYMBOLS else None
        hover = [
            f"{r.system}<br>method {r.method}, objective {r.objective}<br>lr {r.lr}, seed {r.seed}"
            f"<br>{r.n_parameters:,} trainable parameters<br>SGS {r.sgs:.2f}, {usefulness} {getattr(r, usefulness):.2f}"
            f"<br>n = {r.n_per_set} per set"
            for r in rows.itertuples()
        ]
        fig.add_trace(
            go.Scatter(
                x=rows[usefulness],
                y=rows["sgs"],
                mode="markers",
                name=reference or group,
                marker={
                    "size": 16 if reference else 11,
                    "symbol": _REFERENCE_SYMBOLS.get(reference, "circle"),
                    "color": "black" if reference else PALETTE[i % len(PALETTE)],
                    "line": {"width": 1, "color": "white"},
                },
                hovertext=hover,
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title="Safety vs usefulness, one point per run",
        xaxis_title=USEFULNESS_LABELS[usefulness],
        yaxis_title="SGS (safe generations, harmful sets)",
        xaxis_range=[-0.05, 1.05],
        yaxis_range=[-0.05, 1.05],
        legend_title="method / objective",
    )
    return fig
