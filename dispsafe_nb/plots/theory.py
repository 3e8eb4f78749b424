"""Figures of notebook 01: the TV bound (theory)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dispsafe_nb import theory as th
from dispsafe_nb.plots.common import COLORS, PALETTE, as_np, subsample


def distribution_bars_figure(
    dists: Mapping[str, Any], outcome_labels: Sequence[str], title: str = "Output distributions"
) -> go.Figure:
    """Grouped bars: one trace per named distribution over the same outcomes (e.g. base LLM vs safe system)."""
    fig = go.Figure()
    for i, (name, values) in enumerate(dists.items()):
        v = as_np(values)
        if v.shape != (len(outcome_labels),):
            raise ValueError(f"{name!r} has shape {v.shape}, expected ({len(outcome_labels)},)")
        fig.add_trace(
            go.Bar(
                x=list(outcome_labels),
                y=v,
                name=name,
                marker_color=PALETTE[i % len(PALETTE)],
                text=[f"{x:.3f}" for x in v],
                textposition="outside",
                hovertemplate=f"{name}<br>%{{x}}<br>probability %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title, barmode="group", xaxis_title="output r", yaxis_title="probability", yaxis_range=[0, 1.05]
    )
    return fig


def bound_check_scatter(
    gaps: Any | Mapping[str, Any], tvs: Any, max_points: int = 3000, seed: int = 0
) -> go.Figure:
    """|E_p f - E_q f| against TV(p, q) with the line y = x: Theorem 3.1 says no point lies above it.

    ``gaps`` is one array (same length as ``tvs``) or a mapping ``{name of the test function f: array}``,
    one trace per entry. Large inputs are subsampled to ``max_points`` per trace for display only.
    """
    groups = dict(gaps) if isinstance(gaps, Mapping) else {"test function f": gaps}
    tv = as_np(tvs)
    fig = go.Figure()
    for i, (name, g) in enumerate(groups.items()):
        g = np.abs(as_np(g))
        if g.shape != tv.shape:
            raise ValueError(f"gaps {name!r} has shape {g.shape}, tvs has {tv.shape}")
        idx = subsample(len(tv), max_points, seed + i)
        fig.add_trace(
            go.Scatter(
                x=tv[idx],
                y=g[idx],
                mode="markers",
                name=name,
                marker={"size": 4, "opacity": 0.5, "color": PALETTE[i % len(PALETTE)]},
                customdata=tv[idx] - g[idx],
                hovertemplate="TV %{x:.4f}<br>|gap| %{y:.4f}<br>slack TV - |gap| %{customdata:.2e}"
                f"<extra>{name}</extra>",
            )
        )
    top = float(max(tv.max(initial=0.0), 1e-9))
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="bound |gap| = TV",
            line={"color": "black", "dash": "dash"},
            hovertemplate="y = x<extra></extra>",
        )
    )
    fig.update_layout(
        title="Theorem 3.1: |E<sub>p</sub> f − E<sub>q</sub> f| ≤ TV(p, q) for every f with values in [0, 1]",
        xaxis_title="TV(p, q)",
        yaxis_title="|E<sub>p</sub> f − E<sub>q</sub> f|",
    )
    return fig


def pinsker_gap_figure(tv: Any, kl: Any, max_points: int = 4000, seed: int = 0) -> go.Figure:
    """TV against KL for random pairs, with Pinsker ``sqrt(KL/2)`` and Bretagnolle-Huber ``sqrt(1 - e^-KL)``.

    Pairs with infinite or zero KL are left out (the x axis is logarithmic); the title says how many.
    Traces: the pairs, Pinsker, Bretagnolle-Huber.
    """
    tv, kl = as_np(tv), as_np(kl)
    if tv.shape != kl.shape:
        raise ValueError(f"tv and kl must have the same shape, got {tv.shape} and {kl.shape}")
    ok = np.isfinite(kl) & (kl > 0)
    tv_ok, kl_ok = tv[ok], kl[ok]
    idx = subsample(len(tv_ok), max_points, seed)
    lo = float(kl_ok.min()) if len(kl_ok) else 1e-4
    hi = float(kl_ok.max()) if len(kl_ok) else 10.0
    grid = np.geomspace(min(lo, 1e-4), max(hi, 10.0), 300)
    pinsker = np.sqrt(grid / 2)
    bh = np.sqrt(-np.expm1(-grid))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=kl_ok[idx],
            y=tv_ok[idx],
            mode="markers",
            name="random (p, q)",
            marker={"size": 4, "opacity": 0.4, "color": COLORS["tv"]},
            customdata=np.minimum(np.sqrt(kl_ok[idx] / 2), np.sqrt(-np.expm1(-kl_ok[idx]))) - tv_ok[idx],
            hovertemplate="KL %{x:.3g}<br>TV %{y:.4f}<br>best KL bound − TV %{customdata:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=pinsker,
            mode="lines",
            name="Pinsker √(KL/2)",
            line={"color": COLORS["pinsker"], "width": 3},
            hovertemplate="KL %{x:.3g}<br>√(KL/2) = %{y:.3f}<extra>Pinsker</extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=bh,
            mode="lines",
            name="Bretagnolle–Huber √(1 − e<sup>−KL</sup>)",
            line={"color": COLORS["bh"], "width": 3, "dash": "dot"},
            hovertemplate="KL %{x:.3g}<br>√(1 − e^−KL) = %{y:.3f}<extra>Bretagnolle–Huber</extra>",
        )
    )
    n_out = int((~ok).sum())
    fig.update_layout(
        title=f"What a KL guarantee buys: TV ≤ √(KL/2) and TV ≤ √(1 − e<sup>−KL</sup>)"
        f" ({n_out} pairs with KL = ∞ or 0 not shown)",
        xaxis={"title": "KL(p ‖ q)  (log scale)", "type": "log"},
        yaxis={"title": "TV(p, q)", "range": [0, 1.2]},
    )
    return fig


def disp_loss_surface_figure(
    alpha_values: Sequence[float], loss: str = "tv", grid_size: int = 41, zmax: float = 3.0
) -> go.Figure:
    """Interactive loss landscape of one DiSP sample, with a slider over the guard probability α.

    Left: the per-sample loss L(q_y, q_r; α) as a heatmap over the student's mass on the sampled response
    (q_y) and on the refusal (q_r), restricted to the simplex q_y + q_r ≤ 1, with the teacher's two-point
    target (α, 1 − α) and, for "tv", the clip lines q_y = α and q_r = 1 − α. Right: the gradients
    dL/dlog q_y (as a function of q_y) and dL/dlog q_r (as a function of q_r); the loss is a sum of one
    term in q_y and one in q_r, so these two curves are its whole gradient field.

    Five traces per α (heatmap, target marker, clip lines, two gradient curves); the slider has one step per
    α and shows that α's five traces. Colours are capped at ``zmax`` (hover shows the exact value).
    """

    if loss not in ("tv", "kl"):
        raise ValueError(f"loss must be 'tv' or 'kl', got {loss!r}")
    alphas = [float(a) for a in alpha_values]
    if not alphas:
        raise ValueError("alpha_values is empty")
    loss_fn = th.tv_disp_loss if loss == "tv" else th.kl_disp_loss
    name = "TV-DiSP" if loss == "tv" else "KL-DiSP"
    formula = (
        "α [log(α/q<sub>y</sub>)]<sub>+</sub> + (1−α) [log((1−α)/q<sub>r</sub>)]<sub>+</sub>"
        if loss == "tv"
        else "−α log q<sub>y</sub> − (1−α) log q<sub>r</sub>"
    )
    q = np.linspace(0.01, 0.99, grid_size)
    qy_grid, qr_grid = np.meshgrid(q, q)  # rows: q_r, columns: q_y
    inside = qy_grid + qr_grid <= 1.0 + 1e-12
    line_q = np.linspace(0.005, 0.995, 199)

    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.16,
        subplot_titles=(
            "loss over the student's mass (q<sub>y</sub>, q<sub>r</sub>)",
            "gradient w.r.t. log-probability",
        ),
    )
    per_alpha = 5
    for i, a in enumerate(alphas):
        visible = i == 0
        z = loss_fn(np.log(qy_grid), np.log(qr_grid), a).numpy()
        z = np.where(inside, z, np.nan).astype(np.float32)  # float32 halves the saved HTML
        fig.add_trace(
            go.Heatmap(
                x=q,
                y=q,
                z=z,
                zmin=0.0,
                zmax=zmax,
                colorscale="Viridis",
                colorbar={"title": "loss", "x": 0.475, "xanchor": "left", "thickness": 12, "len": 0.9},
                visible=visible,
                name=f"{name} loss",
                hovertemplate="q<sub>y</sub> %{x:.2f}<br>q<sub>r</sub> %{y:.2f}<br>loss %{z:.4f}"
                f"<extra>α = {a:.2f}</extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[a],
                y=[1 - a],
                mode="markers",
                name="teacher target (α, 1 − α)",
                marker={
                    "symbol": "star",
                    "size": 14,
                    "color": "white",
                    "line": {"color": "black", "width": 1},
                },
                visible=visible,
                showlegend=i == 0,
                legendgroup="target",
                hovertemplate=f"teacher target<br>q<sub>y</sub> = α = {a:.2f}<br>q<sub>r</sub> = 1 − α = "
                f"{1 - a:.2f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        clip_x = [a, a, None, 0.0, 1.0] if loss == "tv" else [None]
        clip_y = [0.0, 1.0, None, 1 - a, 1 - a] if loss == "tv" else [None]
        fig.add_trace(
            go.Scatter(
                x=clip_x,
                y=clip_y,
                mode="lines",
                name="clip: q<sub>y</sub> = α, q<sub>r</sub> = 1 − α",
                line={"color": "white", "dash": "dash", "width": 1.5},
                visible=visible,
                showlegend=i == 0 and loss == "tv",
                legendgroup="clip",
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
        gy, _ = th.surrogate_grads(np.log(line_q), np.log(0.5), a, loss=loss)
        _, gr = th.surrogate_grads(np.log(0.5), np.log(line_q), a, loss=loss)
        fig.add_trace(
            go.Scatter(
                x=line_q,
                y=gy.numpy(),
                mode="lines",
                name="∂L/∂log q<sub>y</sub> vs q<sub>y</sub>",
                line={"color": COLORS["tv"], "width": 3},
                visible=visible,
                showlegend=i == 0,
                legendgroup="gy",
                hovertemplate="q<sub>y</sub> %{x:.3f}<br>∂L/∂log q<sub>y</sub> %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        fig.add_trace(
            go.Scatter(
                x=line_q,
                y=gr.numpy(),
                mode="lines",
                name="∂L/∂log q<sub>r</sub> vs q<sub>r</sub>",
                line={"color": COLORS["kl"], "width": 3, "dash": "dash"},
                visible=visible,
                showlegend=i == 0,
                legendgroup="gr",
                hovertemplate="q<sub>r</sub> %{x:.3f}<br>∂L/∂log q<sub>r</sub> %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=2,
        )

    n = len(alphas)
    steps = []
    for i, a in enumerate(alphas):
        vis = [False] * (per_alpha * n)
        vis[per_alpha * i : per_alpha * (i + 1)] = [True] * per_alpha
        steps.append({"method": "restyle", "args": [{"visible": vis}], "label": f"{a:.2f}"})
    fig.update_layout(
        title=f"{name} per-sample loss  L = {formula}",
        sliders=[
            {
                "active": 0,
                "currentvalue": {"prefix": "guard probability α = "},
                "steps": steps,
                "pad": {"t": 40},
            }
        ],
        legend={"orientation": "h", "y": -0.35},
        height=560,
    )
    fig.update_xaxes(title_text="q<sub>y</sub> = q(y | x, W)  (sampled response)", range=[0, 1], row=1, col=1)
    fig.update_yaxes(
        title_text="q<sub>r</sub> = q(y<sub>r</sub> | x, W)  (refusal)", range=[0, 1], row=1, col=1
    )
    fig.update_xaxes(
        title_text="student mass on the atom (q<sub>y</sub> or q<sub>r</sub>)", range=[0, 1], row=1, col=2
    )
    fig.update_yaxes(title_text="gradient", range=[-1.05, 0.05], row=1, col=2)
    return fig


def refusal_logit_grad_figure(
    alpha_values: Sequence[float], q_y: float = 1e-30, n_points: int = 199
) -> go.Figure:
    """dL/dz_r on the refusal logit of a softmax student, TV vs KL, as a function of the refusal mass q_r.

    Uses the closed form :func:`dispsafe_nb.theory.refusal_logit_grad` with a fixed mass ``q_y`` on the
    sampled response (default 1e-30: a whole sampled sentence, so the response clip never engages).
    Two traces per α: TV (solid) and KL (dashed), same colour. Negative = gradient descent raises refusal.
    """

    q_r = np.linspace(0.001, 0.999 - q_y, n_points)
    fig = go.Figure()
    for i, a in enumerate(float(v) for v in alpha_values):
        color = PALETTE[i % len(PALETTE)]
        for loss, dash in (("tv", "solid"), ("kl", "dash")):
            g = th.refusal_logit_grad(q_y, q_r, a, loss=loss).numpy()
            fig.add_trace(
                go.Scatter(
                    x=q_r,
                    y=g,
                    mode="lines",
                    name=f"{loss.upper()}, α = {a:.2f}",
                    line={"color": color, "dash": dash, "width": 3 if loss == "tv" else 2},
                    legendgroup=f"a{i}",
                    hovertemplate=f"{loss.upper()} α = {a:.2f}<br>q<sub>r</sub> %{{x:.3f}}<br>"
                    "∂L/∂z<sub>r</sub> %{y:.3f}<extra></extra>",
                )
            )
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    fig.update_layout(
        title=f"Gradient on the refusal logit (q<sub>y</sub> = {q_y:.0e}): TV and KL agree until q<sub>r</sub> "
        "reaches the teacher's 1 − α",
        xaxis_title="student refusal mass q<sub>r</sub>",
        yaxis_title="∂L/∂z<sub>r</sub>  (< 0: a descent step raises the refusal)",
    )
    return fig


def sequence_bound_figure(tv_seq: Any, tv_bound: Any, kl_seq: Any, kl_chain_sum: Any) -> go.Figure:
    """Sequence-level checks on random autoregressive pairs (one point per pair).

    Left: exact TV(P_seq, Q_seq) against two upper bounds, the per-token sum ``sum_t E TV_t`` and Pinsker on
    the sequence KL ``sqrt(KL_seq / 2)``, with y = x (points lie on or above it). Right: the KL chain-rule
    sum against the exact sequence KL (an identity: points lie on y = x). Five traces.
    """
    tv_seq, tv_bound, kl_seq, kl_sum = (as_np(v) for v in (tv_seq, tv_bound, kl_seq, kl_chain_sum))
    if not (tv_seq.shape == tv_bound.shape == kl_seq.shape == kl_sum.shape):
        raise ValueError("all four inputs must have the same shape")
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=("TV: per-token sum is an upper bound", "KL: chain rule is an identity"),
    )
    fig.add_trace(
        go.Scatter(
            x=tv_seq,
            y=tv_bound,
            mode="markers",
            name="Σ<sub>t</sub> E TV(p<sub>t</sub>, q<sub>t</sub>)",
            marker={"size": 6, "opacity": 0.6, "color": COLORS["tv"]},
            hovertemplate="TV_seq %{x:.4f}<br>per-token sum %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=tv_seq,
            y=np.sqrt(kl_seq / 2),
            mode="markers",
            name="√(KL<sub>seq</sub>/2)  (Pinsker)",
            marker={"size": 6, "opacity": 0.6, "color": COLORS["pinsker"], "symbol": "x"},
            hovertemplate="TV_seq %{x:.4f}<br>√(KL_seq/2) %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    top = float(max(tv_seq.max(initial=0.0), 1e-9))
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="y = x",
            line={"color": "black", "dash": "dash"},
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=kl_seq,
            y=kl_sum,
            mode="markers",
            name="Σ<sub>t</sub> E KL(p<sub>t</sub> ‖ q<sub>t</sub>)",
            marker={"size": 6, "opacity": 0.6, "color": COLORS["kl"]},
            customdata=kl_sum - kl_seq,
            hovertemplate="KL_seq %{x:.4f}<br>chain sum %{y:.4f}<br>difference %{customdata:.1e}"
            "<extra></extra>",
        ),
        row=1,
        col=2,
    )
    top_kl = float(max(kl_seq.max(initial=0.0), 1e-9))
    fig.add_trace(
        go.Scatter(
            x=[0, top_kl],
            y=[0, top_kl],
            mode="lines",
            name="y = x ",
            line={"color": "black", "dash": "dash"},
            showlegend=False,
            hoverinfo="skip",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(title="Sequence level: exact enumeration of every sequence")
    fig.update_xaxes(title_text="exact TV(P<sub>seq</sub>, Q<sub>seq</sub>)", row=1, col=1)
    fig.update_yaxes(title_text="upper bound", row=1, col=1)
    fig.update_xaxes(title_text="exact KL(P<sub>seq</sub> ‖ Q<sub>seq</sub>)", row=1, col=2)
    fig.update_yaxes(title_text="chain-rule sum", row=1, col=2)
    return fig


def toy_overrefusal_figure(result: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Student refusal rate vs training step for the TV and KL surrogates, on benign (left) and harmful
    (right) prompts, with the teacher's refusal rate as dashed lines.

    ``result`` is the output of :func:`dispsafe_nb.theory.toy_overrefusal_experiment`. Six traces:
    TV benign, KL benign, teacher benign, TV harmful, KL harmful, teacher harmful.
    """
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, subplot_titles=("benign prompts", "harmful prompts")
    )
    for col, group in ((1, "benign"), (2, "harmful")):
        key = f"refusal_{group}"
        n_steps = len(result["tv"][key]) - 1
        for loss in ("tv", "kl"):
            y = as_np(result[loss][key])
            fig.add_trace(
                go.Scatter(
                    x=np.arange(len(y)),
                    y=y,
                    mode="lines",
                    name=f"{loss.upper()}-DiSP student",
                    line={"color": COLORS[loss], "width": 3},
                    legendgroup=loss,
                    showlegend=col == 1,
                    hovertemplate=f"{loss.upper()} ({group})<br>step %{{x}}<br>refusal %{{y:.4f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        level = float(result["teacher"][key])
        fig.add_trace(
            go.Scatter(
                x=[0, n_steps],
                y=[level, level],
                mode="lines",
                name="teacher (LLM + guard)",
                line={"color": COLORS["teacher"], "dash": "dash", "width": 2},
                legendgroup="teacher",
                showlegend=col == 1,
                hovertemplate=f"teacher ({group})<br>refusal {level:.4f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_layout(title=title or "Toy distillation: refusal rate during training, TV vs KL surrogate")
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="mean refusal probability q(y<sub>r</sub> | x)", range=[0, 1], row=1, col=1)
    return fig
