"""Figures of the linear harm probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from dispsafe_nb.plots.common import PALETTE


def probe_layers_figure(layers: Sequence[Mapping[str, Any]], chosen: int) -> go.Figure:
    """A harm probe's AUROC per decoder layer (`benchmarks/harm_probe.py`'s "layers"): on held-out training
    prompts (what chose the layer) and off-distribution, harmful vs safe prompts of XSTest and of the bundled
    forms' twins."""
    series = {
        "held-out training prompts": "held_out_auroc",
        "XSTest unsafe vs safe": "xstest_auroc",
        "bundled requests vs safe twins": "bundled_forms_auroc",
    }
    fig = go.Figure()
    x = [row["layer"] for row in layers]
    for i, (name, key) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[row[key] for row in layers],
                mode="lines+markers",
                name=name,
                line={"color": PALETTE[i % len(PALETTE)]},
                hovertemplate=name + "<br>layer %{x}: AUROC %{y:.3f}<extra></extra>",
            )
        )
    fig.add_vline(x=chosen, line_dash="dot", annotation_text=f"chosen layer {chosen}")
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(
        title="Does the frozen model separate what the dual system refuses? A linear probe per layer",
        xaxis_title="decoder layer",
        yaxis_title="AUROC",
        yaxis_range=[0.4, 1.0],
    )
    return fig
