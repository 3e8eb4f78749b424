"""Plotly figures for the notebooks. Every function returns a ``plotly.graph_objects.Figure`` with a title,
axis labels and hover text; saving and showing is the notebook's job (``dispsafe_nb.notebooks.outputs.save_figure``).

One module per group of notebooks, so that several people can add figures at once: `theory` (01), `evaluation`
(02-03), `baselines` (04), `over_refusal` (06), `costs` (07), `generalisation` and `harm_probe` (08); `common` holds the
shared colours. Everything is importable from here.
"""

from dispsafe_nb.plots.baselines import tradeoff_scatter
from dispsafe_nb.plots.common import COLORS, PALETTE, SYSTEM_COLORS
from dispsafe_nb.plots.costs import (
    flops_per_token_bars,
    latency_bars,
    phone_memory_bars,
    time_per_token_by_batch,
)
from dispsafe_nb.plots.evaluation import (
    alpha_histogram,
    alpha_samples_figure,
    benchmark_bars,
    bound_check_real_figure,
    category_bars,
    training_curves,
)
from dispsafe_nb.plots.generalisation import data_size_curve, family_bars, ratio_by_set_bars
from dispsafe_nb.plots.harm_probe import probe_layers_figure
from dispsafe_nb.plots.over_refusal import over_refusal_by_type_figure, refusal_probability_figure
from dispsafe_nb.plots.theory import (
    bound_check_scatter,
    disp_loss_surface_figure,
    distribution_bars_figure,
    pinsker_gap_figure,
    refusal_logit_grad_figure,
    sequence_bound_figure,
    toy_overrefusal_figure,
)

__all__ = [
    "data_size_curve",
    "family_bars",
    "probe_layers_figure",
    "ratio_by_set_bars",
    "COLORS",
    "PALETTE",
    "SYSTEM_COLORS",
    "alpha_histogram",
    "alpha_samples_figure",
    "benchmark_bars",
    "bound_check_real_figure",
    "bound_check_scatter",
    "category_bars",
    "disp_loss_surface_figure",
    "flops_per_token_bars",
    "latency_bars",
    "phone_memory_bars",
    "time_per_token_by_batch",
    "distribution_bars_figure",
    "over_refusal_by_type_figure",
    "pinsker_gap_figure",
    "refusal_probability_figure",
    "refusal_logit_grad_figure",
    "sequence_bound_figure",
    "toy_overrefusal_figure",
    "tradeoff_scatter",
    "training_curves",
]
