"""Figures and tables of the scaling study (:mod:`lldd_core.sweep.study`): agreement against model size.

Data in, figure or table out, no streamlit (see :mod:`lldd_core.plots.common`). Builders take the
:class:`~lldd_core.sweep.study.SweepCell` list of a sweep and never mutate it. Agreement is that of the
LLV surrogate's predicted gain curves with the measured ones (:mod:`lldd_core.analysis.gains`): the mean over
evaluation prompts of the per-prompt Spearman and Pearson correlations over layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..sweep.study import SweepCell
from .common import DASHBOARD, Theme, log_axis, plotly_text

#: The two agreement measures the figure shows, as (cell attribute, panel title).
METRICS: tuple[tuple[str, str], ...] = (("mean_spearman", "mean Spearman"), ("mean_pearson", "mean Pearson"))
#: The LLV paper's family averages over its ten datasets (Nettasinghe & Joseph, arXiv 2603.12541;
#: order 32, ε = 0.1): model -> (parameters, Spearman, Pearson).
PAPER_GPT2: dict[str, tuple[int, float, float]] = {
    "gpt2": (124_439_808, 0.77, 0.68),
    "gpt2-medium": (354_823_168, 0.81, 0.74),
    "gpt2-large": (774_030_080, 0.995, 0.997),
}
#: Columns of :func:`cells_table`, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "model", "parameters", "dataset", "status", "mean Spearman", "mean Pearson", "layers", "d_model", "order",
    "prompts", "compute s", "note",
)
_MARGIN = {"l": 60, "r": 20, "t": 70, "b": 50}


def _number(x: float | None) -> float:
    """``x`` as a float; ``None``/NaN/Inf as NaN (a gap in a line, ``null`` in JSON)."""
    return float(x) if x is not None and math.isfinite(x) else float("nan")


def format_params(n: int | None) -> str:
    """``124439808`` -> ``"124M"``, ``1_011_781_632`` -> ``"1.01B"``, ``37760`` -> ``"37.8k"``; ``None`` -> ``"?"``."""
    if n is None:
        return "?"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def plotted_cells(cells: Sequence[SweepCell], dataset: str) -> list[SweepCell]:
    """The cells of ``dataset`` the figure draws: those with a result, by parameter count (then model)."""
    chosen = [c for c in cells if c.dataset == dataset and c.done and c.n_params is not None]
    return sorted(chosen, key=lambda c: (c.n_params, c.model))


def scaling_figure(cells: Sequence[SweepCell], *, paper: bool = False, theme: Theme = DASHBOARD) -> go.Figure:
    """Mean Spearman (left) and mean Pearson (right) against parameter count (log axis), one line per dataset.

    Only cells with a result are drawn (NaN agreement, e.g. a model with a single injection layer,
    leaves a gap). ``paper`` adds the LLV paper's GPT-2 family averages as a dashed grey line. The parameter
    axis is labelled at powers of ten as ``10M``, ``100M``, ``1B`` (:func:`~lldd_core.plots.common.log_axis`).
    """
    sizes = [c.n_params for c in cells if c.done and c.n_params] + ([p for p, _, _ in PAPER_GPT2.values()] if paper else [])
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in METRICS], horizontal_spacing=0.08)
    for col, (attr, title) in enumerate(METRICS, start=1):
        for i, dataset in enumerate(datasets):
            chosen = plotted_cells(cells, dataset)
            if not chosen:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[c.n_params for c in chosen], y=[_number(getattr(c, attr)) for c in chosen],
                    mode="lines+markers", name=plotly_text(dataset), legendgroup=dataset, showlegend=col == 1,
                    line={"color": theme.cycle(i)}, text=[plotly_text(c.model) for c in chosen],
                    customdata=[format_params(c.n_params) for c in chosen],
                    hovertemplate="%{text}<br>%{customdata} parameters<br>" + title + " %{y:.3f}<extra>"
                    + plotly_text(dataset) + "</extra>",
                ),
                row=1, col=col,
            )
        if paper:
            ref = list(PAPER_GPT2.items())
            fig.add_trace(
                go.Scatter(
                    x=[p for _, (p, _, _) in ref], y=[v[col] for _, v in ref], mode="lines+markers",
                    name="LLV paper, GPT-2 family", legendgroup="paper", showlegend=col == 1,
                    line={"color": theme.rgba("paper", 0.9), "dash": "dash"}, text=[m for m, _ in ref],
                    hovertemplate="%{text} (paper)<br>" + title + " %{y:.3f}<extra></extra>",
                ),
                row=1, col=col,
            )
        fig.update_xaxes(title={"text": "parameters"}, **log_axis(sizes, label=lambda n: format_params(int(round(n)))),
                         row=1, col=col)
        fig.update_yaxes(title={"text": f"{title} (predicted vs measured)"}, row=1, col=col)
    fig.update_layout(
        title={"text": "Agreement of predicted and measured gain curves against model size"},
        height=440, margin=_MARGIN, legend={"title": {"text": "dataset"}}, hovermode="closest",
    )
    return theme.apply(fig)


def cells_table(cells: Sequence[SweepCell]) -> pd.DataFrame:
    """One row per cell (:data:`TABLE_COLUMNS`): numbers as numbers (missing ones empty), ready for CSV."""
    def ints(values: list[int | None]) -> pd.array:
        return pd.array(values, dtype="Int64")

    return pd.DataFrame({
        "model": [c.model for c in cells],
        "parameters": ints([c.n_params for c in cells]),
        "dataset": [c.dataset for c in cells],
        "status": [c.status for c in cells],
        "mean Spearman": np.array([_number(c.mean_spearman) for c in cells], dtype=float),
        "mean Pearson": np.array([_number(c.mean_pearson) for c in cells], dtype=float),
        "layers": ints([c.n_layers for c in cells]),
        "d_model": ints([c.d_model for c in cells]),
        "order": ints([c.order for c in cells]),
        "prompts": ints([c.n_prompts for c in cells]),
        "compute s": np.array([_number(c.elapsed_s) for c in cells], dtype=float),
        "note": [c.message for c in cells],
    }, columns=list(TABLE_COLUMNS))

