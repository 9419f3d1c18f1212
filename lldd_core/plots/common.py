"""Plotly figure builders: result dataclasses in, :class:`plotly.graph_objects.Figure` out.

No streamlit here: the same figures serve the dashboard, notebooks and exported reports. Every
builder is pure (it never mutates the result) and returns a figure that serializes with
``fig.to_json()``.

Conventions follow :mod:`lldd_core.analysis.jacobian`: ``y`` is the output embedding of the last
token, ``J_i`` the detached Jacobian with respect to input position ``i`` and
``y = sum_i J_i x_{0,i} + b``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..layering import stream

if TYPE_CHECKING:  # the type only; importing it at run time would pull in torch
    from ..analysis.jacobian import JacobianResult

#: Colours shared by the figures (plotly's default qualitative palette starts with these two).
DETACHED_COLOR = "#1f77b4"
PLAIN_COLOR = "#d62728"
DIAGONAL_COLOR = "rgba(120, 120, 120, 0.8)"
BIAS_COLOR = "#7f7f7f"


def format_error(value: float) -> str:
    """A relative error as ``3.2e-16`` (``nan``/``inf`` spelled out)."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1e}"


def token_label(position: int, token: str) -> str:
    """``"3: ' Gate'"``: position plus the token with its spaces visible and line breaks escaped.

    HTML-escaped, because plotly renders a subset of HTML in legends, ticks and hover texts (a
    token such as ``<s>`` would otherwise vanish).
    """
    return plotly_text(f"{position}: {token!r}")


def token_labels(tokens: Sequence[str]) -> list[str]:
    """Unique labels for every token of a prompt (positions make repeated tokens distinct)."""
    return [token_label(i, t) for i, t in enumerate(tokens)]


def positive_or_nan(values: np.ndarray) -> np.ndarray:
    """``values`` as float with zeros, negatives and non-finite entries replaced by NaN.

    A log axis cannot show zero; NaN leaves a gap (serialized as ``null``) instead of a fake value.
    """
    out = np.asarray(values, dtype=float).copy()
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def _diagonal(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """The range that covers every finite value, for drawing ``y = x`` across a panel."""
    finite = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return (-1.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:  # a constant output would draw a zero-length line
        lo, hi = lo - 1.0, hi + 1.0
    return (lo, hi)


def _scatter_panel(
    fig: go.Figure,
    col: int,
    y: np.ndarray,
    estimate: np.ndarray,
    name: str,
    color: str,
) -> None:
    """One panel of :func:`reconstruction_scatter`: the points and the ``y = x`` diagonal."""
    lo, hi = _diagonal([y, estimate])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            line={"color": DIAGONAL_COLOR, "dash": "dash", "width": 1},
            name="y = x",
            hoverinfo="skip",
            showlegend=col == 1,
            legendgroup="diagonal",
        ),
        row=1,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=y,
            y=estimate,
            mode="markers",
            marker={"color": color, "size": 5, "opacity": 0.75},
            name=name,
            customdata=np.arange(y.shape[0]),
            hovertemplate="dimension %{customdata}<br>y = %{x:.6g}<br>reconstruction = %{y:.6g}<extra>"
            + name
            + "</extra>",
        ),
        row=1,
        col=col,
    )


def reconstruction_scatter(result: JacobianResult) -> go.Figure:
    """Each dimension of ``y`` against its reconstruction, detached (left) and ordinary (right).

    Left: ``sum_i J_i x_{0,i} + b`` with the detached Jacobians, which lies on the diagonal up to
    rounding. Right: the same sum with the ordinary Jacobians, which does not (the model is
    nonlinear). Each subplot title carries the relative error ``||y - y_hat|| / ||y||``.
    """
    y = np.asarray(result.y, dtype=float)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.08,
        subplot_titles=(
            f"Detached: Σ J_i x_i + b (rel. error {format_error(result.reconstruction_error)})",
            f"Ordinary Jacobian: Σ J_i x_i + b (rel. error {format_error(result.plain_reconstruction_error)})",
        ),
    )
    _scatter_panel(fig, 1, y, np.asarray(result.reconstruction, dtype=float), "detached", DETACHED_COLOR)
    _scatter_panel(fig, 2, y, np.asarray(result.plain_reconstruction, dtype=float), "ordinary", PLAIN_COLOR)
    fig.update_xaxes(title_text="y (model output)", zeroline=False)
    fig.update_yaxes(title_text="reconstruction", zeroline=False, row=1, col=1)
    fig.update_yaxes(zeroline=False, row=1, col=2)
    fig.update_layout(
        height=430,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": -0.3, "xanchor": "center", "x": 0.5},
        hovermode="closest",
    )
    return fig


def spectrum_figure(result: JacobianResult) -> go.Figure:
    """Singular values of every token's ``J_i`` against their index, one line per token (log y).

    Exact zeros (and anything non-finite) are left out, since a log axis cannot show them. The
    hover text gives the token, the index, the value and the token's stable rank.
    """
    sv = np.asarray(result.singular_values, dtype=float)
    stable = np.asarray(result.stable_rank, dtype=float)
    fig = go.Figure()
    for i, label in enumerate(token_labels(result.tokens)):
        values = positive_or_nan(sv[i])
        fig.add_trace(
            go.Scatter(
                x=np.arange(1, values.shape[0] + 1),
                y=values,
                mode="lines",
                name=label,
                line={"width": 1.5},
                connectgaps=False,
                text=[label] * values.shape[0],  # via text, so the token never enters the template syntax
                hovertemplate=f"%{{text}}<br>σ_%{{x}} = %{{y:.4g}}<br>stable rank {stable[i]:.3g}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": f"Singular values of J_i: x_0 → {stream(result.layer)} (layer {result.layer} of 0..{result.n_layers})"},
        xaxis_title="index k",
        yaxis_title="σ_k(J_i)",
        yaxis_type="log",
        yaxis_exponentformat="power",  # 10⁻⁴, not the SI "100µ" a log axis shows by default
        height=430,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"title": {"text": "token"}},
        hovermode="closest",
    )
    return fig


def token_contribution_figure(result: JacobianResult) -> go.Figure:
    """Bar chart of each token's share ``||J_i x_{0,i}||`` of the output, plus the bias ``||b||``."""
    labels = token_labels(result.tokens)
    contributions = np.asarray(result.token_contributions, dtype=float)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=labels,
            y=contributions,
            name="‖J_i x_i‖",
            marker={"color": DETACHED_COLOR},
            customdata=np.asarray(result.input_ids),
            hovertemplate="%{x}<br>token id %{customdata}<br>‖J_i x_i‖ = %{y:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=["bias b"],
            y=[float(result.bias_norm)],
            name="‖b‖ (bias channel)",
            marker={"color": BIAS_COLOR},
            hovertemplate="bias channel<br>‖b‖ = %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": f"Token contributions to y (‖y‖ = {result.output_norm:.4g})"},
        xaxis_title="token",
        yaxis_title="norm",
        height=430,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        showlegend=False,
        bargap=0.25,
    )
    fig.update_xaxes(type="category", tickangle=-45)
    return fig


def plotly_text(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` so plotly shows ``text`` literally instead of as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
