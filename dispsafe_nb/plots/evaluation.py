"""Figures of notebooks 02-03: the safe system, evaluation and distillation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dispsafe_nb.plots.common import PALETTE, SYSTEM_COLORS

# ---------------------------------------------------------------------------------------------------------
# Safe system and evaluation figures (notebooks 02-03)
# ---------------------------------------------------------------------------------------------------------


def alpha_samples_figure(labels: Sequence[str], samples: Sequence[Any]) -> go.Figure:
    """α(x, y) of each sampled answer (dots) and the estimated refusal mass mean(1 − α) (bars), per prompt.

    `samples` are `teacher_cache.TeacherSample`s, one per label.
    """
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=list(labels),
            y=[s.refusal_mass for s in samples],
            name="estimated p(y_r | x)",
            marker={
                "color": "rgba(31,119,180,0.25)",
                "line": {"color": "#1f77b4", "width": 1.5},
            },
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[label for label, s in zip(labels, samples, strict=True) for _ in s.alphas],
            y=[a for s in samples for a in s.alphas],
            mode="markers",
            name="α(x, y) of a sample",
            marker={"size": 10, "color": "#d62728", "opacity": 0.7},
            text=[y[:200] for s in samples for y in s.responses],
            hovertemplate="α=%{y:.3f}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="The safe system per prompt: guard α of sampled answers and the refusal mass",
        yaxis={"title": "probability", "range": [0, 1.05]},
        xaxis={"title": "prompt"},
    )
    return fig


def benchmark_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars of each benchmark's headline metric (SGS, over-refusal, compliance, accuracy) per system.

    `table` is `records.records_table(records)`.
    """
    fig = go.Figure()
    for system, rows in table.groupby("system", sort=False):
        labels = [f"{b}<br>({m})" for b, m in zip(rows["benchmark"], rows["metric"], strict=True)]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=rows["value"],
                name=system,
                marker_color=SYSTEM_COLORS.get(system),
                text=[f"{v:.2f}" for v in rows["value"]],
                customdata=rows["n"],
                hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra>" + system + "</extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title="Safety (SGS ↑), over-refusal (↓) and usefulness (↑) per benchmark",
        yaxis={"title": "rate", "range": [0, 1.05]},
    )
    return fig


def category_bars(per_category: dict[str, float], title: str) -> go.Figure:
    """One bar per category (e.g. XSTest prompt types), sorted by value."""
    items = sorted(per_category.items(), key=lambda kv: kv[1], reverse=True)
    fig = go.Figure(go.Bar(x=[k for k, _ in items], y=[v for _, v in items], marker_color="#1f77b4"))
    fig.update_layout(
        title=title, yaxis={"title": "refusal rate", "range": [0, 1.05]}, xaxis={"title": "category"}
    )
    return fig


def training_curves(histories: Mapping[str, Any]) -> go.Figure:
    """Training loss (thin) and validation loss (markers) per run; `histories` maps a name to a `history.History`."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("loss", "validation: |p̂(y_r|x) − q(y_r|x)| (a TV lower bound)")
    )
    for name, history in histories.items():
        color = SYSTEM_COLORS.get(name)
        fig.add_trace(
            go.Scatter(
                x=history.step,
                y=history.loss,
                mode="lines",
                name=f"{name} train",
                line={"color": color, "width": 1},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=history.val_step,
                y=history.val_loss,
                mode="lines+markers",
                name=f"{name} val",
                line={"color": color, "width": 3},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=history.val_step,
                y=history.val_refusal_gap,
                mode="lines+markers",
                name=f"{name} refusal gap",
                line={"color": color, "dash": "dot"},
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="Distilling the safe system into a soft prompt")
    return fig


def alpha_histogram(alphas_by_kind: Mapping[str, Sequence[float]]) -> go.Figure:
    """Overlaid histograms of the guard's α on teacher samples, one per prompt kind."""
    fig = go.Figure()
    for kind, alphas in alphas_by_kind.items():
        fig.add_trace(
            go.Histogram(
                x=list(alphas), name=kind, opacity=0.6, xbins={"start": 0, "end": 1.0001, "size": 0.05}
            )
        )
    fig.update_layout(
        barmode="overlay",
        title="Teacher data: the guard's α(x, y) on sampled answers",
        xaxis={"title": "α(x, y) = p(safe | x, y)"},
        yaxis={"title": "samples"},
    )
    return fig


def bound_check_real_figure(checks: Sequence[Any], labels: Sequence[str]) -> go.Figure:
    """Observed score gaps vs. estimated TV per prompt (±2 standard errors), with the line gap = TV: the safety gap
    (filled markers) and the refusal gap (open markers) of every prompt.

    `checks` are `tv_bound_estimate.BoundCheck`s; `labels` name each prompt's kind (colour).
    """
    fig = go.Figure()
    for i, label in enumerate(dict.fromkeys(labels)):
        rows = [c for c, lab in zip(checks, labels, strict=True) if lab == label]
        for f, symbol, gap, se in (
            ("safe", "circle", "gap", "gap_se"),
            ("refused", "circle-open", "refusal_gap", "refusal_gap_se"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=[c.tv for c in rows],
                    y=[getattr(c, gap) for c in rows],
                    mode="markers",
                    name=f"{label}, f = {f}",
                    legendgroup=label,
                    marker={"size": 10, "symbol": symbol, "color": PALETTE[i % len(PALETTE)]},
                    error_x={"type": "data", "array": [2 * c.tv_se for c in rows]},
                    error_y={"type": "data", "array": [2 * getattr(c, se) for c in rows]},
                    text=[c.prompt[:80] for c in rows],
                    hovertemplate="TV≈%{x:.3f}, gap≈%{y:.3f}<br>%{text}<extra>f = " + f + "</extra>",
                )
            )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="gap = TV", line={"color": "black", "dash": "dash"})
    )
    fig.update_layout(
        title="Theorem 3.1 on SmolLM2: score gaps between dual system and student vs. their TV distance",
        xaxis={"title": "estimated TV(p, q) per prompt", "range": [-0.02, 1.05]},
        yaxis={"title": "|E_p f − E_q f| per prompt (f = safe, f = refused)", "range": [-0.02, 1.05]},
    )
    return fig
