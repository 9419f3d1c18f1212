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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..layering import stream

if TYPE_CHECKING:  # the type only; importing it at run time would pull in torch
    from ..analysis.jacobian import JacobianResult

# --- themes ---------------------------------------------------------------------------------------------
#: Every colour a figure uses, by what it means, named by hue; a :class:`Theme` says what each hue is.
ROLE_HUES: dict[str, str] = {
    # detached Jacobian and spectra
    "detached": "blue", "plain": "red", "bias": "grey", "diagonal": "grey",
    "cumulative": "blue", "block": "green", "attention": "orange", "mlp": "red",
    # gain curves
    "predicted": "blue", "measured": "red", "exact": "green", "spearman": "purple", "pearson": "orange",
    "current": "grey", "flagged": "grey", "flag_line": "red",
    # attribution graphs
    "embedding": "grey", "bias_node": "olive", "neuron": "blue", "logit": "purple", "positive": "blue",
    "negative": "red",
    # control and steering
    "llv": "blue", "uniform": "orange", "last": "green", "middle": "red", "early": "purple", "random": "brown",
    "unsteered": "grey", "additive": "blue", "steer_llv": "green", "jacobian": "orange", "lqr": "purple",
    "other": "cyan", "paper": "grey",
}
#: plotly's default qualitative palette (D3), by hue: the dashboard's colours.
D3_HUES: dict[str, str] = {
    "blue": "#1f77b4", "orange": "#ff7f0e", "green": "#2ca02c", "red": "#d62728", "purple": "#9467bd",
    "brown": "#8c564b", "pink": "#e377c2", "grey": "#7f7f7f", "olive": "#bcbd22", "cyan": "#17becf",
}
#: Okabe & Ito's colour-blind-safe palette (2008), by the hue each stands in for (grey and brown: neutral).
OKABE_ITO_HUES: dict[str, str] = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "red": "#D55E00", "purple": "#CC79A7",
    "brown": "#000000", "pink": "#CC79A7", "grey": "#8C8C8C", "olive": "#F0E442", "cyan": "#56B4E9",
}
#: Line dashes by role where colour alone must not tell curves apart (print in grey, colour-blind readers).
ROLE_DASHES: dict[str, str] = {"predicted": "solid", "measured": "dash", "exact": "dot"}


@dataclass(frozen=True)
class Theme:
    """How figures look: colours by hue (:data:`ROLE_HUES` names what each role uses), the palette that
    cycles over tokens or datasets, and the layout :meth:`apply` sets.

    ``native``: the dashboard draws the figure in Streamlit's own chart theme (its fonts and background);
    otherwise exactly as built, so the screen shows what the export saves.
    """

    name: str
    label: str
    hues: Mapping[str, str]
    palette: tuple[str, ...]
    native: bool = True
    font_family: str | None = None
    font_size: int | None = None
    layout: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, Any] = field(default_factory=dict)

    def color(self, role: str) -> str:
        """The colour of ``role`` (a key of :data:`ROLE_HUES`)."""
        return self.hues[ROLE_HUES[role]]

    def rgba(self, role: str, alpha: float) -> str:
        """``role``'s colour with opacity ``alpha`` (for bands and fills)."""
        return with_alpha(self.color(role), alpha)

    def cycle(self, i: int) -> str:
        """The ``i``-th colour of the palette (repeating)."""
        return self.palette[i % len(self.palette)]

    def apply(self, fig: go.Figure) -> go.Figure:
        """``fig`` with this theme's layout, fonts and axes (in place; returned for chaining)."""
        if self.layout:
            fig.update_layout(**self.layout)
        if self.font_family or self.font_size:
            font = {k: v for k, v in (("family", self.font_family), ("size", self.font_size)) if v}
            fig.update_layout(font=font)
        if self.axes:
            fig.update_xaxes(**self.axes)
            fig.update_yaxes(**self.axes)
        return fig


def with_alpha(color: str, alpha: float) -> str:
    """A ``#rrggbb`` colour as ``rgba(r, g, b, alpha)``."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha:g})"


#: Registered themes by name, in the order the sidebar offers them.
THEMES: dict[str, Theme] = {}


def register_theme(theme: Theme) -> Theme:
    """Add ``theme`` to :data:`THEMES` (a new name, or a ``ValueError``)."""
    if theme.name in THEMES:
        raise ValueError(f"a theme named {theme.name!r} is registered already")
    THEMES[theme.name] = theme
    return theme


def get_theme(name: str) -> Theme:
    """The registered theme ``name`` (``ValueError`` naming the choices for anything else)."""
    try:
        return THEMES[name]
    except KeyError:
        raise ValueError(f"unknown theme {name!r}; choose one of {', '.join(THEMES)}") from None


#: The dashboard: plotly's colours in Streamlit's chart theme (its fonts and background follow light/dark mode).
DASHBOARD = register_theme(Theme("dashboard", "Dashboard", D3_HUES, tuple(D3_HUES[h] for h in (
    "blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan"))))
#: Print: white paper, black axes with outside ticks and no grid, Okabe–Ito colours, DejaVu Sans (it has the
#: Greek and math signs the titles use, and ships with Chromium's Debian package) at print sizes.
REPORT = register_theme(Theme(
    "report", "Report (light, print)", OKABE_ITO_HUES,
    tuple(OKABE_ITO_HUES[h] for h in ("blue", "orange", "green", "red", "purple", "cyan", "olive", "brown")),
    native=False, font_family="DejaVu Sans, Liberation Sans, Arial, sans-serif", font_size=14,
    layout={"template": "simple_white", "paper_bgcolor": "white", "plot_bgcolor": "white",
            "title": {"font": {"size": 16}}, "legend": {"bgcolor": "rgba(255, 255, 255, 0.8)"}},
    axes={"showline": True, "linecolor": "black", "linewidth": 1, "ticks": "outside", "tickcolor": "black",
          "showgrid": False, "zeroline": False, "mirror": False},
))


# --- log axes --------------------------------------------------------------------------------------------
#: Below this many decades (or with fewer than three powers of ten in view) a log axis is also labelled at 2 and 5:
#: there is room, and 1 and 10 alone say little.
FEW_DECADES = 2.5


def log_tick_text(value: float) -> str:
    """A log axis' tick label: ``0.01``, ``1``, ``100`` in plain digits from 1e-3 to 1e4, else ``1e-5``, ``2e6``."""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def log_axis(values: Any, label: Any = log_tick_text, max_labels: int = 8) -> dict[str, Any]:
    """Layout of a readable log axis over the finite positive ``values``: labels at powers of ten (every few
    decades when there are many), also at 2 and 5 when the data span under :data:`FEW_DECADES` or fewer than three
    powers of ten are in view; each tick labelled ``label(value)``; unlabelled minor ticks between (while there are
    few decades); a range with a little room around the data."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    axis: dict[str, Any] = {"type": "log"}
    if v.size == 0:
        return axis
    lo, hi = math.log10(float(v.min())), math.log10(float(v.max()))
    first, last = math.floor(lo), math.ceil(hi)
    pad = max(0.05 * (hi - lo), 0.08)
    shown = (lo - pad, hi + pad)
    step = max(1, math.ceil((last - first) / max_labels))

    def inside(mantissas: tuple[int, ...]) -> list[float]:  # aligned to the step, so 1 is labelled when in view
        ticks = [m * 10.0**e for e in range(first - 1, last + 1) if e % step == 0 for m in mantissas]
        return [t for t in ticks if shown[0] <= math.log10(t) <= shown[1]]

    mantissas: tuple[int, ...] = (1,)
    ticks = inside(mantissas)
    if hi - lo < FEW_DECADES or len(ticks) < 3:
        mantissas = (1, 2, 5)
        ticks = inside(mantissas)
    if len(ticks) < 2:  # a narrow range: plotly's own linear-looking ticks read well there
        return axis
    # minor ticks (unlabelled) at the other m × 10^e, only while there are few decades (else they blacken the axis)
    minor = [m * 10.0**e for e in range(first - 1, last + 1) for m in range(2, 10) if m not in mantissas] \
        if last - first <= 6 else []
    minor = [t for t in minor if shown[0] <= math.log10(t) <= shown[1]]
    axis.update(tickmode="array", tickvals=ticks, ticktext=[label(t) for t in ticks], range=list(shown),
                minor={"tickmode": "array", "tickvals": minor, "ticks": "outside", "ticklen": 3, "showgrid": False})
    return axis


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
    theme: Theme,
) -> None:
    """One panel of :func:`reconstruction_scatter`: the points and the ``y = x`` diagonal."""
    lo, hi = _diagonal([y, estimate])
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            line={"color": theme.rgba("diagonal", 0.8), "dash": "dash", "width": 1},
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


def reconstruction_scatter(result: JacobianResult, theme: Theme = DASHBOARD) -> go.Figure:
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
    _scatter_panel(fig, 1, y, np.asarray(result.reconstruction, dtype=float), "detached", theme.color("detached"), theme)
    _scatter_panel(fig, 2, y, np.asarray(result.plain_reconstruction, dtype=float), "ordinary", theme.color("plain"),
                   theme)
    fig.update_xaxes(title_text="y (model output)", zeroline=False)
    fig.update_yaxes(title_text="reconstruction", zeroline=False, row=1, col=1)
    fig.update_yaxes(zeroline=False, row=1, col=2)
    fig.update_layout(
        height=430,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": -0.3, "xanchor": "center", "x": 0.5},
        hovermode="closest",
    )
    return theme.apply(fig)


def spectrum_figure(result: JacobianResult, theme: Theme = DASHBOARD) -> go.Figure:
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
                line={"width": 1.5, "color": theme.cycle(i)},
                connectgaps=False,
                text=[label] * values.shape[0],  # via text, so the token never enters the template syntax
                hovertemplate=f"%{{text}}<br>σ_%{{x}} = %{{y:.4g}}<br>stable rank {stable[i]:.3g}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": f"Singular values of J_i: x_0 → {stream(result.layer)} (layer {result.layer} of 0..{result.n_layers})"},
        xaxis_title="index k",
        yaxis={"title": {"text": "σ_k(J_i)"}, **log_axis(sv)},  # 1e-3 … 10, minor ticks unlabelled
        height=430,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"title": {"text": "token"}},
        hovermode="closest",
    )
    return theme.apply(fig)


def token_contribution_figure(result: JacobianResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Bar chart of each token's share ``||J_i x_{0,i}||`` of the output, plus the bias ``||b||``."""
    labels = token_labels(result.tokens)
    contributions = np.asarray(result.token_contributions, dtype=float)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=labels,
            y=contributions,
            name="‖J_i x_i‖",
            marker={"color": theme.color("detached")},
            customdata=np.asarray(result.input_ids),
            hovertemplate="%{x}<br>token id %{customdata}<br>‖J_i x_i‖ = %{y:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=["bias b"],
            y=[float(result.bias_norm)],
            name="‖b‖ (bias channel)",
            marker={"color": theme.color("bias")},
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
    return theme.apply(fig)


def plotly_text(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` so plotly shows ``text`` literally instead of as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
