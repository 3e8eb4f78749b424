"""Figures of notebook 08: student / dual SGS per set and per phrasing form, against the training-mix size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from dispsafe_nb.plots.common import PALETTE


def _error_bars(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Asymmetric error bars from each row's bootstrap interval (zero where a row has none)."""
    up = [
        (r["high"] - r["ratio"]) if r.get("high") is not None and r["ratio"] is not None else 0 for r in rows
    ]
    down = [
        (r["ratio"] - r["low"]) if r.get("low") is not None and r["ratio"] is not None else 0 for r in rows
    ]
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}


def ratio_by_set_bars(
    comparison: Mapping[str, Any], target: float = 0.9, title: str | None = None
) -> go.Figure:
    """Student SGS / dual SGS on each harmful set and each phrasing form (`generalisation.compare` output), with
    95 % paired bootstrap intervals and the target as a dashed line."""
    rows = [(name, r) for name, r in comparison["sets"].items() if "ratio" in r]
    rows += [(f"form: {f}", r) for f, r in comparison["per_form"].items()]
    names, values = [n for n, _ in rows], [r for _, r in rows]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[r["ratio"] for r in values],
            error_y=_error_bars(values),
            marker_color=[PALETTE[0] if not n.startswith("form:") else PALETTE[1] for n in names],
            customdata=[r["n"] for r in values],
            hovertemplate="%{x}<br>student / dual SGS %{y:.2f}<br>n = %{customdata}<extra></extra>",
        )
    )
    fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:.0%} of the dual system")
    fig.update_layout(
        title=title or "How much of the dual system's safety the student keeps, per set and phrasing form",
        yaxis_title="student SGS / dual SGS",
        yaxis_rangemode="tozero",
    )
    return fig


def data_size_curve(
    curve: Mapping[int, Mapping[str, Any]], keys: Sequence[str], target: float = 0.9
) -> go.Figure:
    """Student / dual SGS against the number of training prompts, one line per harmful set or phrasing form
    (`keys`: set names, or "form: <form>"), each point with its bootstrap interval."""
    sizes = sorted(curve)
    fig = go.Figure()
    for i, key in enumerate(keys):
        rows = []
        for size in sizes:
            c = curve[size]
            rows.append(
                c["per_form"][key.removeprefix("form: ")] if key.startswith("form: ") else c["sets"][key]
            )
        fig.add_trace(
            go.Scatter(
                x=sizes,
                y=[r["ratio"] for r in rows],
                error_y=_error_bars(rows),
                mode="lines+markers",
                name=key,
                line={"color": PALETTE[i % len(PALETTE)]},
                hovertemplate=key + "<br>%{x} prompts: %{y:.2f}<extra></extra>",
            )
        )
    fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:.0%}")
    fig.update_layout(
        title="The student's safety against the size of its training mix",
        xaxis_title="training prompts (nested mixes)",
        xaxis_type="log",
        yaxis_title="student SGS / dual SGS",
        yaxis_rangemode="tozero",
    )
    return fig


def family_bars(student: Mapping[str, float], dual: Mapping[str, float]) -> go.Figure:
    """Refusal rate per jailbreak family (an EvalRecord's per_category), student beside the dual system."""
    families = sorted(dual)
    fig = go.Figure()
    for i, (name, rates) in enumerate((("dual system", dual), ("student", student))):
        fig.add_trace(
            go.Bar(
                x=families,
                y=[rates.get(f) for f in families],
                name=name,
                marker_color=PALETTE[i],
                hovertemplate="%{x}<br>refuses %{y:.0%}<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        title="Jailbreak framings: how often each system still refuses, per family",
        yaxis_title="refusal rate (SGS)",
        yaxis_range=[0, 1],
        barmode="group",
    )
    return fig
