"""Figures and tables of gain curves: predicted (LLV), measured and exact, and their ablations.

Data in, figure or table out, no streamlit (see :mod:`lldd_core.plots.common`). Builders take a
:class:`~lldd_core.analysis.gains.GainsResult` (curves ``[P, K]`` of ``P`` evaluation prompts over the
injection layers ``K``) or a :class:`~lldd_core.analysis.ablation.GainsAblation` (agreement per swept value)
and never mutate it.

Spread over prompts is always **±1 standard deviation** (population, ``ddof=0``): the band around
the mean curves and the error bars of the ablations. Correlations that do not exist (a constant
curve, one layer) are NaN; they are left out of means and spreads and shown as gaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..concepts.data import PAPER_PER_CLASS
from ..concepts.splits import is_fitted
from ..layering import layer_axis
from .common import DASHBOARD, ROLE_DASHES, Theme, plotly_text

if TYPE_CHECKING:  # types only: importing the analysis at run time would pull in torch
    from ..analysis.ablation import GainsAblation
    from ..analysis.gains import GainsResult

#: The three curves, in drawing order.
CURVES: tuple[str, ...] = ("predicted", "measured", "exact")
CURVE_LABELS: dict[str, str] = {
    "predicted": "predicted (LLV)",
    "measured": "measured (injection)",
    "exact": "exact linear",
}
#: How each curve's ±1 std band is told apart besides its colour: fill opacity and hatching (plotly fill patterns).
BAND_STYLES: dict[str, dict[str, Any]] = {
    "predicted": {"alpha": 0.22, "pattern": ""},
    "measured": {"alpha": 0.10, "pattern": "/"},
    "exact": {"alpha": 0.10, "pattern": "."},
}
#: What the band and the error bars show.
SPREAD_LABEL = "±1 std over prompts"
#: How each swept parameter is named on axes and in tables.
VARY_LABELS: dict[str, str] = {"order": "order d", "eps": "ε", "complement": "complement"}
_MARGIN = {"l": 60, "r": 20, "t": 60, "b": 50}


# --- numbers -----------------------------------------------------------------------------------------
def mean_and_std(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (``ddof=0``) over the finite entries along ``axis``; NaN where none are."""
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    filled = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / n
        dev = np.where(finite, x - np.expand_dims(mean, axis), 0.0)
        std = np.sqrt((dev**2).sum(axis=axis) / n)
    return np.where(n > 0, mean, np.nan), np.where(n > 0, std, np.nan)


def format_corr(value: float) -> str:
    """A correlation as ``0.906``; ``n/a`` when it does not exist (NaN)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def best_layers(result: GainsResult, curve: str) -> list[int]:
    """Per prompt, the injection layer with the largest gain of ``curve``."""
    values = np.asarray(getattr(result, curve), dtype=float)
    return [int(result.layers[i]) for i in np.argmax(values, axis=1)]


def splits_line(split_sizes: dict[str, int], requested: Sequence[int] | None = None) -> tuple[str, bool]:
    """(``"6/4/3 per class (concept/operating/evaluation)"`` plus how it came about, whether it shrank).

    The default request fitted to a smaller dataset (:func:`~lldd_core.concepts.splits.default_sizes`) says so
    and is not a shrink; other sizes that did not fit are.
    """
    names = ("concept", "operating", "evaluation")
    used = [int(split_sizes[s]) for s in names]
    line = f"{'/'.join(map(str, used))} per class (concept/operating/evaluation)"
    if requested is not None and is_fitted(requested, used):
        default = "/".join(map(str, PAPER_PER_CLASS.values()))
        return line + f", the default {default} fitted to the dataset's smaller class", False
    shrunk = requested is not None and [int(n) for n in requested] != used
    if shrunk:
        line += f", shrunk from {'/'.join(str(int(n)) for n in requested)}: the smaller class has too few examples"
    return line, shrunk


# --- one configuration -----------------------------------------------------------------------------
def _axis_layers(result: GainsResult) -> dict[str, Any]:
    return {"title": {"text": layer_axis("injection x_l ← x_l + u·v_l, before block l")}, "tickmode": "array",
            "tickvals": list(result.layers)}


def mean_curves_figure(result: GainsResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Mean over prompts of the predicted, measured and exact gains per layer, each with a ±1 std band.

    Per curve three traces: the band's upper edge (a thin dotted line in the curve's colour), its lower edge
    filled up to the upper one (its own legend entry; opacity and hatching by :data:`BAND_STYLES`, so
    overlapping bands stay apart) and the mean line (dashes by :data:`~lldd_core.plots.common.ROLE_DASHES`).
    """
    x = list(result.layers)
    fig = go.Figure()
    for curve in CURVES:
        mean, std = mean_and_std(getattr(result, curve))
        color, label, band = theme.color(curve), CURVE_LABELS[curve], BAND_STYLES[curve]
        edge = {"width": 0.8, "color": theme.rgba(curve, 0.6), "dash": "dot"}
        fig.add_trace(go.Scatter(x=x, y=mean + std, mode="lines", line=edge, legendgroup=f"{curve} band",
                                 showlegend=False, hoverinfo="skip", name=f"{label} +1 std"))
        pattern = {"shape": band["pattern"], "fgcolor": color, "size": 7, "solidity": 0.25} if band["pattern"] else None
        fig.add_trace(go.Scatter(x=x, y=mean - std, mode="lines", line=edge, fill="tonexty",
                                 fillcolor=theme.rgba(curve, band["alpha"]), fillpattern=pattern,
                                 legendgroup=f"{curve} band", showlegend=True, hoverinfo="skip",
                                 name=f"{label}: {SPREAD_LABEL}"))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", line={"color": color, "dash": ROLE_DASHES[curve],
                                                                          "width": 2.2},
                                 legendgroup=curve, name=f"{label}: mean", customdata=std,
                                 hovertemplate="layer %{x}<br>mean %{y:.4g} ± %{customdata:.3g}<extra>"
                                 + plotly_text(label) + "</extra>"))
    _shade_flagged(fig, result, theme)
    fig.update_layout(
        title={"text": f"Gain per injection layer: mean over {len(result.prompts)} prompts, band {SPREAD_LABEL}"},
        xaxis=_axis_layers(result), yaxis={"title": {"text": "gain (readout change per unit injection)"}},
        height=460, margin=_MARGIN, hovermode="x unified",
        legend={"title": {"text": "curve (line: mean; band: ±1 std)"}, "groupclick": "toggleitem"},
    )
    return theme.apply(fig)


def _shade_flagged(fig: go.Figure, result: GainsResult, theme: Theme) -> None:
    """Grey bands over the injection layers whose direction is flagged (left out of the agreement)."""
    for k in getattr(result, "flagged_layers", []):
        if k in result.layers:
            fig.add_vrect(x0=k - 0.45, x1=k + 0.45, fillcolor=theme.rgba("flagged", 0.16), line_width=0,
                          layer="below", annotation_text="flagged", annotation_position="top left")


def direction_norms_figure(result: GainsResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Relative direction strength ``‖E_l‖ / rms_l`` per layer (bars; flagged layers grey) and the flag line
    ``MIN_RELATIVE_STRENGTH · max_k`` (:func:`lldd_core.linalg.agreement.direction_reliability`)."""
    from ..linalg.agreement import MIN_RELATIVE_STRENGTH

    strength = np.asarray(result.direction_strength, dtype=float)
    layers = list(range(len(strength)))
    flagged = set(result.flagged_layers)
    colors = [theme.rgba("flagged", 0.7) if k in flagged else theme.color("measured") for k in layers]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers, y=strength, marker_color=colors, name="‖E_l‖ / rms state norm",
                         customdata=np.asarray(result.direction_norms, dtype=float),
                         hovertemplate="layer %{x}<br>relative %{y:.4g}<br>‖E_l‖ %{customdata:.4g}<extra></extra>"))
    line = MIN_RELATIVE_STRENGTH * float(strength.max()) if strength.size else 0.0
    fig.add_trace(go.Scatter(x=layers, y=[line] * len(layers), mode="lines",
                             name=f"flag below ({MIN_RELATIVE_STRENGTH:g} × the strongest layer)",
                             line={"color": theme.color("flag_line"), "dash": "dash"}, hoverinfo="skip"))
    fig.update_layout(
        title={"text": "Concept direction strength per layer (grey: flagged, left out of the agreement)"},
        xaxis={"title": {"text": layer_axis("residual stream x_l, entering block l")}, "dtick": 1},
        yaxis={"title": {"text": "‖E_l‖ / rms ‖x_l‖"}}, height=340, margin=_MARGIN,
    )
    return theme.apply(fig)


def prompt_curves_figure(result: GainsResult, prompt: int, theme: Theme = DASHBOARD) -> go.Figure:
    """The three gain curves of evaluation prompt ``prompt``, its Spearman and Pearson in the title."""
    if not 0 <= prompt < len(result.prompts):
        raise ValueError(f"prompt must lie in 0..{len(result.prompts) - 1}; got {prompt}")
    fig = go.Figure()
    for curve in CURVES:
        fig.add_trace(go.Scatter(
            x=list(result.layers), y=np.asarray(getattr(result, curve), dtype=float)[prompt], mode="lines+markers",
            name=CURVE_LABELS[curve], line={"color": theme.color(curve), "dash": ROLE_DASHES[curve]},
            hovertemplate="layer %{x}<br>gain %{y:.4g}<extra>" + plotly_text(CURVE_LABELS[curve]) + "</extra>",
        ))
    sp, pe = format_corr(float(result.spearman[prompt])), format_corr(float(result.pearson[prompt]))
    fig.update_layout(
        title={"text": f"Prompt {prompt}: Spearman {sp}, Pearson {pe} (predicted vs measured)"},
        xaxis=_axis_layers(result), yaxis={"title": {"text": "gain"}},
        height=400, margin=_MARGIN, hovermode="x unified", legend={"title": {"text": "curve"}},
    )
    return theme.apply(fig)


def agreement_histogram(result: GainsResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Histograms of the per-prompt Spearman and Pearson correlations (NaN left out), means as lines."""
    fig = go.Figure()
    missing = []
    for name in ("spearman", "pearson"):
        values = np.asarray(getattr(result, name), dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size < values.size:
            missing.append(f"{values.size - finite.size} {name.capitalize()}")
        fig.add_trace(go.Histogram(
            x=finite, name=name.capitalize(), opacity=0.65, marker={"color": theme.color(name)},
            xbins={"start": -1.0, "end": 1.0001, "size": 0.1}, hovertemplate="%{x}: %{y} prompts<extra></extra>",
        ))
        if finite.size:
            fig.add_vline(x=float(finite.mean()), line={"color": theme.color(name), "dash": "dash"})
    note = f" ({', '.join(missing)} undefined: constant curve)" if missing else ""
    fig.update_layout(
        title={"text": f"Per-prompt agreement of predicted and measured curves{note}"},
        xaxis={"title": {"text": "correlation over layers"}, "range": [-1.05, 1.05]},
        yaxis={"title": {"text": "prompts"}}, barmode="overlay", height=360, margin=_MARGIN,
        legend={"title": {"text": "dashed: mean"}},
    )
    return theme.apply(fig)


def prompt_table(result: GainsResult) -> pd.DataFrame:
    """One row per evaluation prompt: its text, Spearman, Pearson and best layer of each curve."""
    table: dict[str, Any] = {
        "prompt": np.arange(len(result.prompts)),
        "text": list(result.prompts),
        "Spearman": np.asarray(result.spearman, dtype=float),
        "Pearson": np.asarray(result.pearson, dtype=float),
    }
    for curve in CURVES:
        table[f"best layer l ({curve})"] = best_layers(result, curve)
    return pd.DataFrame(table)


def curves_table(result: GainsResult) -> pd.DataFrame:
    """Long table for CSV: one row per (prompt, layer) with the three gains."""
    P, K = np.asarray(result.predicted).shape
    prompt, layer = np.meshgrid(np.arange(P), np.arange(K), indexing="ij")
    table: dict[str, Any] = {
        "prompt": prompt.ravel(),
        "text": [result.prompts[p] for p in prompt.ravel()],
        "layer l (x_l)": [int(result.layers[k]) for k in layer.ravel()],
    }
    for curve in CURVES:
        table[curve] = np.asarray(getattr(result, curve), dtype=float).ravel()
    return pd.DataFrame(table)


# --- ablations -------------------------------------------------------------------------------------
def current_value(ablation: GainsAblation) -> Any:
    """The swept parameter's value in the main settings the ablation ran with."""
    return getattr(ablation, ablation.vary)


def ablation_figure(ablation: GainsAblation, theme: Theme = DASHBOARD) -> go.Figure:
    """Mean Spearman and mean Pearson (error bars ±1 std over prompts) and the correlations of the mean
    curves against the swept value: log x for the order and ``ε``, grouped bars for the complement.

    The value of the main settings (:func:`current_value`) is marked: a dashed vertical line on the
    log axes, a shaded column and a labelled tick for the complement.
    """
    vary = ablation.vary
    categorical = vary == "complement"
    x = [str(v) for v in ablation.values] if categorical else [float(v) for v in ablation.values]
    fig = go.Figure()
    for name in ("spearman", "pearson"):
        _, std = mean_and_std(getattr(ablation, name), axis=1)
        mean = np.asarray(getattr(ablation, f"mean_{name}"), dtype=float)
        label, color = f"mean {name.capitalize()}", theme.color(name)
        error = {"type": "data", "array": std, "visible": True}
        hover = f"{VARY_LABELS[vary]} %{{x}}<br>{label} %{{y:.3f}} ± %{{error_y.array:.3f}}<extra></extra>"
        if categorical:
            fig.add_trace(go.Bar(x=x, y=mean, name=label, marker={"color": color}, error_y=error, hovertemplate=hover,
                                 offsetgroup=name))
        else:
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=label, line={"color": color},
                                     error_y=error, hovertemplate=hover))
    for name in ("spearman", "pearson"):
        fig.add_trace(go.Scatter(
            x=x, y=np.asarray(getattr(ablation, f"{name}_of_means"), dtype=float),
            mode="markers" if categorical else "lines+markers", name=f"{name.capitalize()} of mean curves",
            line={"color": theme.color(name), "dash": "dot"},
            marker={"symbol": "diamond", "size": 10, "color": theme.color(name)},
            hovertemplate=f"{VARY_LABELS[vary]} %{{x}}<br>%{{y:.3f}}<extra>{name.capitalize()} of means</extra>",
            offsetgroup=name if categorical else None,  # on its bar (scattermode "group")
        ))
    current = current_value(ablation)
    xaxis: dict[str, Any] = {"title": {"text": VARY_LABELS[vary]}}
    if categorical:
        ticks = [f"<b>{plotly_text(v)}</b><br>(main setting)" if v == str(current) else plotly_text(v) for v in x]
        xaxis.update(type="category", categoryorder="array", categoryarray=x, tickmode="array", tickvals=x,
                     ticktext=ticks)
        if str(current) in x:
            i = x.index(str(current))
            fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=theme.rgba("current", 0.8), opacity=0.12, line_width=0, layer="below")
    else:
        cx = float(current)
        fig.add_trace(go.Scatter(x=[cx, cx], y=[-1.05, 1.05], mode="lines", name=f"main setting: {current}",
                                 line={"color": theme.rgba("current", 0.8), "dash": "dash"}, hoverinfo="skip"))
        ticks = sorted({*x, cx})
        pad = 0.1  # decades of room around the outer markers (a log axis' range is in log10 units)
        xaxis.update(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{v:g}" for v in ticks],
                     range=[math.log10(ticks[0]) - pad, math.log10(ticks[-1]) + pad])
    fig.update_layout(
        title={"text": f"Agreement against {VARY_LABELS[vary]} (error bars {SPREAD_LABEL})"},
        xaxis=xaxis, yaxis={"title": {"text": "correlation (predicted vs measured)"}, "range": [-1.05, 1.05]},
        height=420, margin=_MARGIN, barmode="group", scattermode="group" if categorical else None,
    )
    return theme.apply(fig)


def ablation_table(ablation: GainsAblation) -> pd.DataFrame:
    """One row per swept value: mean Spearman / Pearson with their std over prompts, the correlations of
    the mean curves, and whether it is the main setting."""
    _, sp_std = mean_and_std(ablation.spearman, axis=1)
    _, pe_std = mean_and_std(ablation.pearson, axis=1)
    current = current_value(ablation)
    return pd.DataFrame({
        VARY_LABELS[ablation.vary]: list(ablation.values),
        "mean Spearman": np.asarray(ablation.mean_spearman, dtype=float),
        "Spearman std": sp_std,
        "mean Pearson": np.asarray(ablation.mean_pearson, dtype=float),
        "Pearson std": pe_std,
        "Spearman of means": np.asarray(ablation.spearman_of_means, dtype=float),
        "Pearson of means": np.asarray(ablation.pearson_of_means, dtype=float),
        "main setting": [v == current for v in ablation.values],
    })
