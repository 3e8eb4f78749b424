"""Figures of notebook 06: probing systems prompt by prompt, and over-refusal by prompt type."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dispsafe_nb.plots.common import PALETTE, SYSTEM_COLORS


def _color(system: str, i: int) -> str:
    return SYSTEM_COLORS.get(system, PALETTE[i % len(PALETTE)])


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def refusal_probability_figure(table: pd.DataFrame) -> go.Figure:
    """log10 q(y_r | x) per prompt (x axis) and system (one marker trace each), from `ProbeResult.table()`;
    systems without an exact q (the dual system) are left out."""
    fig = go.Figure()
    rows = table[table["logq_refusal"].notna()] if len(table) else table
    prompts = list(dict.fromkeys(table["prompt"])) if len(table) else []
    labels = {p: f"{i + 1}. {_short(p)}" for i, p in enumerate(prompts)}
    for i, (system, part) in enumerate(rows.groupby("system", sort=False) if len(rows) else []):
        fig.add_trace(
            go.Scatter(
                x=[labels[p] for p in part["prompt"]],
                y=[v / math.log(10) for v in part["logq_refusal"]],
                mode="markers+lines",
                name=system,
                marker={"size": 10, "color": _color(system, i)},
                text=list(part["prompt"]),
                hovertemplate="%{text}<br>log10 q(y_r | x) = %{y:.2f}<extra>" + system + "</extra>",
            )
        )
    fig.update_layout(
        title="How likely is each system to say the refusal y_r, word for word?",
        xaxis_title="prompt",
        yaxis_title="log10 q(y_r | x)",
        legend_title="system",
    )
    return fig


def over_refusal_by_type_figure(
    table: pd.DataFrame, paper: Mapping[str, float] | None = None, title: str = "Over-refusal by prompt type"
) -> go.Figure:
    """Left: refusal rate per prompt type (x) and system (bars), with its n in the hover. Right: the aggregate over
    all types, ours beside the paper's (`paper`: {system: rate}, drawn as hatched bars labelled "paper")."""
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.78, 0.22], shared_yaxes=True, horizontal_spacing=0.03
    )
    per_type = table[table["category"] != "all"]
    overall = table[table["category"] == "all"]
    for i, (system, part) in enumerate(per_type.groupby("system", sort=False)):
        color = _color(system, i)
        fig.add_trace(
            go.Bar(
                x=list(part["label"]),
                y=list(part["rate"]),
                name=system,
                legendgroup=system,
                marker_color=color,
                customdata=list(zip(part["refused"], part["n"], strict=True)),
                hovertemplate="%{x}: %{y:.0%} (%{customdata[0]:.1f} of %{customdata[1]})<extra>"
                + system
                + "</extra>",
            ),
            row=1,
            col=1,
        )
        mine = overall[overall["system"] == system]
        fig.add_trace(
            go.Bar(
                x=["ours"] * len(mine),
                y=list(mine["rate"]),
                name=system,
                legendgroup=system,
                showlegend=False,
                marker_color=color,
                hovertemplate="all types: %{y:.0%}<extra>" + system + "</extra>",
            ),
            row=1,
            col=2,
        )
    for i, (system, rate) in enumerate((paper or {}).items()):
        fig.add_trace(
            go.Bar(
                x=["paper"],
                y=[rate],
                name=f"{system} (paper)",
                marker={"color": _color(system, i), "pattern": {"shape": "/"}},
                hovertemplate="the paper's " + system + ": %{y:.1%}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_layout(title=title, barmode="group", legend_title="system", yaxis_title="refusal rate")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    fig.update_xaxes(title_text="prompt type", row=1, col=1)
    fig.update_xaxes(title_text="all types", row=1, col=2)
    return fig
