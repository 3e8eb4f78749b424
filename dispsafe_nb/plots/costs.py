"""Figures of notebook 07: FLOPs per token, time per token by batch size, latency per option, a phone's memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from dispsafe_nb.plots.common import PALETTE


def flops_per_token_bars(
    rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Any] | None = None
) -> go.Figure:
    """GFLOPs per generated token of each model, alone and with a cached soft prompt (`costs.flops.paper_flops_table`
    rows); the paper's reported pair, when given, as two more bars."""
    names = [r["model"] for r in rows]
    fig = go.Figure()
    for i, (key, label) in enumerate(
        (("gflops_per_token", "model alone"), ("gflops_per_token_soft_prompt", "with soft prompt"))
    ):
        fig.add_trace(
            go.Bar(
                x=names,
                y=[r[key] for r in rows],
                name=f"{label} (our formula)",
                marker_color=PALETTE[i],
                hovertemplate="%{x}<br>%{y:.3f} GFLOPs per token<extra>" + label + "</extra>",
            )
        )
    if paper:  # the paper's two figures under their own label, beside ours for the same model
        label = f"{paper['model']} (paper)"
        for key, name, color in (
            ("base_gflops", "paper: model alone", "#888888"),
            ("soft_gflops", "paper: with soft prompt", "#bbbbbb"),
        ):
            fig.add_trace(
                go.Bar(
                    x=[label],
                    y=[paper[key]],
                    name=name,
                    marker_color=color,
                    hovertemplate="%{y:.2f} GFLOPs per token<extra>" + name + "</extra>",
                )
            )
    fig.update_layout(
        title="FLOPs per generated token (matrix products), by model",
        yaxis_title="GFLOPs per token",
        barmode="group",
    )
    return fig


def time_per_token_by_batch(per_token_s: Mapping[int, float], bandwidth_bound_s: float) -> go.Figure:
    """Measured seconds per generated token against the batch size, with the memory-bandwidth bound of batch 1
    divided by the batch (what perfect sharing of one read of the weights would give)."""
    batches = sorted(per_token_s)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=batches,
            y=[1000 * per_token_s[b] for b in batches],
            mode="lines+markers",
            name="measured",
            hovertemplate="batch %{x}: %{y:.2f} ms per token<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=batches,
            y=[1000 * bandwidth_bound_s / b for b in batches],
            mode="lines",
            line={"dash": "dash"},
            name="weights read once per step (bandwidth bound / batch)",
            hovertemplate="batch %{x}: %{y:.2f} ms per token<extra></extra>",
        )
    )
    fig.update_layout(
        title="Decoding: time per generated token as the batch grows",
        xaxis_title="batch size (rows decoded together)",
        yaxis_title="ms per generated token",
        xaxis_type="log",
        yaxis_type="log",
    )
    return fig


def latency_bars(latency_ms: Mapping[str, float]) -> go.Figure:
    """Milliseconds per generated token of each option (base, soft prompt with its cache, dual system)."""
    names = list(latency_ms)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[latency_ms[n] for n in names],
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(names))],
            hovertemplate="%{x}: %{y:.2f} ms per token<extra></extra>",
        )
    )
    fig.update_layout(title="Time per generated token, measured on this machine", yaxis_title="ms per token")
    return fig


def phone_memory_bars(rows: Sequence[Mapping[str, Any]], budget_gb: float) -> go.Figure:
    """Memory of the base model, the soft-prompted model and the dual system per (LLM, guard) pair
    (`costs.phone_budget` rows), with the app's memory budget as a line."""
    labels = [f"{r['llm']} + {r['guard']}" for r in rows]
    fig = go.Figure()
    for i, (key, name) in enumerate(
        (("base_gb", "LLM alone"), ("soft_prompt_gb", "LLM + soft prompt"), ("dual_gb", "dual system"))
    ):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[r[key] for r in rows],
                name=name,
                marker_color=PALETTE[i],
                hovertemplate="%{x}<br>%{y:.2f} GB<extra>" + name + "</extra>",
            )
        )
    fig.add_hline(y=budget_gb, line_dash="dash", annotation_text=f"app budget {budget_gb:.1f} GB")
    fig.update_layout(
        title="Memory on a phone: weights at 4 bits + one request's KV cache",
        yaxis_title="GB",
        barmode="group",
    )
    return fig
