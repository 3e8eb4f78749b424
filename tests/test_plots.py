"""Fast checks of dispsafe_nb.plots: each function returns a titled Figure whose traces carry the inputs."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from dispsafe_nb import plots
from dispsafe_nb import theory as th


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text or ""


def test_distribution_bars_figure():
    base, teacher = [0.5, 0.3, 0.2, 0.0], [0.5, 0.15, 0.0, 0.35]
    fig = plots.distribution_bars_figure({"base": base, "teacher": teacher}, ["a", "b", "c", "refusal"])
    assert isinstance(fig, go.Figure) and _title(fig)
    assert len(fig.data) == 2
    np.testing.assert_allclose(fig.data[1].y, teacher)
    assert list(fig.data[0].x) == ["a", "b", "c", "refusal"]
    with pytest.raises(ValueError):
        plots.distribution_bars_figure({"bad": [0.5, 0.5]}, ["a", "b", "c"])


def test_bound_check_scatter_groups_and_line():
    rng = np.random.default_rng(0)
    tv = rng.uniform(size=50)
    gaps = {"f1": -0.5 * tv, "f2": 0.9 * tv}
    fig = plots.bound_check_scatter(gaps, tv)
    assert _title(fig) and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert len(fig.data) == 3  # two groups + the y = x line
    np.testing.assert_allclose(fig.data[0].x, tv)
    np.testing.assert_allclose(fig.data[0].y, 0.5 * tv)  # absolute value of the gap
    assert fig.data[2].mode == "lines"
    assert all(t.hovertemplate for t in fig.data)
    single = plots.bound_check_scatter(gaps["f2"], tv)
    assert len(single.data) == 2
    big = plots.bound_check_scatter(np.zeros(1000), np.ones(1000), max_points=100)
    assert len(big.data[0].x) == 100


def test_pinsker_gap_figure_drops_infinite_kl():
    tv = np.array([0.1, 0.5, 0.9, 0.3])
    kl = np.array([0.05, 1.0, math.inf, 0.0])
    fig = plots.pinsker_gap_figure(tv, kl)
    assert len(fig.data) == 3
    np.testing.assert_allclose(fig.data[0].x, [0.05, 1.0])
    np.testing.assert_allclose(fig.data[0].y, [0.1, 0.5])
    grid = np.asarray(fig.data[1].x)
    np.testing.assert_allclose(fig.data[1].y, np.sqrt(grid / 2))
    np.testing.assert_allclose(fig.data[2].y, np.sqrt(1 - np.exp(-grid)))
    assert "2 pairs" in _title(fig)
    assert fig.layout.xaxis.type == "log"


@pytest.mark.parametrize("loss", ["tv", "kl"])
def test_disp_loss_surface_figure_slider(loss):
    alphas = [0.1, 0.5, 0.9]
    fig = plots.disp_loss_surface_figure(alphas, loss=loss, grid_size=11)
    assert _title(fig)
    assert len(fig.data) == 5 * len(alphas)
    (slider,) = fig.layout.sliders
    assert len(slider.steps) == len(alphas)
    assert [s.label for s in slider.steps] == ["0.10", "0.50", "0.90"]
    # each step shows exactly that alpha's five traces
    for i, step in enumerate(slider.steps):
        vis = step.args[0]["visible"]
        assert sum(vis) == 5 and all(vis[5 * i : 5 * i + 5])
    assert [t.visible for t in fig.data[:5]] == [True] * 5
    # heatmap values are the surrogate on the grid, NaN outside the simplex
    heat = fig.data[5]  # alpha = 0.5
    q = np.asarray(heat.x)
    z = np.asarray(heat.z, dtype=float)
    fn = th.tv_disp_loss if loss == "tv" else th.kl_disp_loss
    assert z[0, 0] == pytest.approx(float(fn(math.log(q[0]), math.log(q[0]), 0.5)))
    assert np.isnan(z[-1, -1])
    # target marker and gradient curves
    assert (fig.data[6].x[0], fig.data[6].y[0]) == pytest.approx((0.5, 0.5))
    gy = np.asarray(fig.data[8].y)
    qy = np.asarray(fig.data[8].x)
    if loss == "tv":
        np.testing.assert_allclose(gy[qy < 0.5], -0.5)
        np.testing.assert_allclose(gy[qy >= 0.5], 0.0)
    else:
        np.testing.assert_allclose(gy, -0.5)
    with pytest.raises(ValueError):
        plots.disp_loss_surface_figure(alphas, loss="hinge")


def test_refusal_logit_grad_figure():
    fig = plots.refusal_logit_grad_figure([0.9, 0.5], q_y=1e-30, n_points=21)
    assert _title(fig) and len(fig.data) == 4
    tv_trace, kl_trace = fig.data[0], fig.data[1]
    qr = np.asarray(kl_trace.x)
    np.testing.assert_allclose(kl_trace.y, qr - (1 - 0.9), atol=1e-12)
    below = qr < 0.1
    np.testing.assert_allclose(np.asarray(tv_trace.y)[below], np.asarray(kl_trace.y)[below], atol=1e-12)
    np.testing.assert_allclose(np.asarray(tv_trace.y)[~below], 0.9 * qr[~below], atol=1e-12)


def test_sequence_bound_figure():
    tv_seq, bound = np.array([0.1, 0.2]), np.array([0.15, 0.3])
    kl_seq, chain = np.array([0.05, 0.4]), np.array([0.05, 0.4])
    fig = plots.sequence_bound_figure(tv_seq, bound, kl_seq, chain)
    assert _title(fig) and len(fig.data) == 5
    np.testing.assert_allclose(fig.data[0].y, bound)
    np.testing.assert_allclose(fig.data[1].y, np.sqrt(kl_seq / 2))
    np.testing.assert_allclose(fig.data[3].x, kl_seq)
    with pytest.raises(ValueError):
        plots.sequence_bound_figure(tv_seq, bound[:1], kl_seq, chain)


def test_toy_overrefusal_figure():
    res = th.toy_overrefusal_experiment(n_prompts=6, n_responses=3, steps=4, seed=0)
    fig = plots.toy_overrefusal_figure(res)
    assert _title(fig) and len(fig.data) == 6
    np.testing.assert_allclose(fig.data[0].y, res["tv"]["refusal_benign"])
    np.testing.assert_allclose(fig.data[1].y, res["kl"]["refusal_benign"])
    np.testing.assert_allclose(fig.data[4].y, res["kl"]["refusal_harmful"])
    assert list(fig.data[2].y) == [res["teacher"]["refusal_benign"]] * 2
    assert fig.data[5].line.dash == "dash"
    assert list(fig.data[0].x) == list(range(5))
    assert plots.toy_overrefusal_figure(res, title="custom").layout.title.text == "custom"


def _row(ratio, low, high, n=10):
    return {"ratio": ratio, "low": low, "high": high, "n": n}


def test_generalisation_figures_show_ratios_with_their_intervals():
    comparison = {
        "sets": {
            "jbb_harmful": _row(0.5, 0.3, 0.7),
            "xstest_safe": {"metric": "over_refusal", "student": 0.1, "dual": 0.05, "n": 10},
        },
        "per_form": {"question": _row(0.2, 0.1, 0.4), "short": _row(None, None, None)},
    }
    fig = plots.ratio_by_set_bars(comparison)
    bar = fig.data[0]
    assert list(bar.x) == ["jbb_harmful", "form: question", "form: short"]  # over-refusal sets have no ratio
    assert list(bar.error_y.array) == pytest.approx([0.2, 0.2, 0]) and list(bar.error_y.arrayminus)[0] == 0.2
    assert "student" in _title(fig).lower() or "dual" in fig.layout.yaxis.title.text
    curve = {
        64: {"sets": {"jbb_harmful": _row(0.2, 0.1, 0.3)}, "per_form": {"question": _row(0.1, 0.0, 0.2)}},
        512: {"sets": {"jbb_harmful": _row(0.6, 0.5, 0.7)}, "per_form": {"question": _row(0.4, 0.3, 0.5)}},
    }
    fig = plots.data_size_curve(curve, ["jbb_harmful", "form: question"])
    assert [list(t.x) for t in fig.data] == [[64, 512], [64, 512]]
    assert [list(t.y) for t in fig.data] == [[0.2, 0.6], [0.1, 0.4]]
    fig = plots.family_bars({"persona": 0.2}, {"persona": 0.9, "fiction": 0.5})
    assert [list(t.x) for t in fig.data] == [["fiction", "persona"]] * 2
    assert list(fig.data[1].y) == [None, 0.2]  # a family the student was not scored on stays empty


def test_the_probe_figure_draws_each_auroc_per_layer_and_marks_the_chosen_one():
    layers = [
        {
            "layer": i,
            "held_out_auroc": 0.6 + i / 10,
            "xstest_auroc": 0.55,
            "bundled_forms_auroc": 0.5 + i / 20,
        }
        for i in range(3)
    ]
    fig = plots.probe_layers_figure(layers, chosen=2)
    assert [list(t.x) for t in fig.data] == [[0, 1, 2]] * 3
    assert list(fig.data[0].y) == pytest.approx([0.6, 0.7, 0.8]) and list(fig.data[1].y) == [0.55] * 3
    assert any(s.x0 == 2 for s in fig.layout.shapes) and "layer" in fig.layout.xaxis.title.text
