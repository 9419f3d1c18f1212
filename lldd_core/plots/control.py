"""Figures and tables of concept control (:mod:`lldd_core.analysis.control`) and steered generation (:mod:`lldd_core.steering.compare`).

Data in, figure, table or HTML out, no streamlit (see :mod:`lldd_core.plots.common`). Builders take a
:class:`~lldd_core.analysis.control.ControlResult` (schedules ``u`` ``[S, N, L]`` of ``S`` schedules and
``N`` target shifts ``Δy`` over the ``L`` injection layers) or a list of
:class:`~lldd_core.steering.compare.SteeringResult` (one per steering method, all of the same prompt) and
never mutate them.

A schedule that did not reach its target within the tolerance has energy NaN: it is a gap in the
energy lines, a missing bar in the ratios, and ``"not reached"`` in the table.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from ..layering import layer_axis
from .common import DASHBOARD, ROLE_HUES, Theme, log_axis, plotly_text
from .spectra import display_token

if TYPE_CHECKING:  # types only: importing the analyses at run time would pull in torch
    from ..analysis.control import ControlResult
    from ..steering.compare import SteeringResult

#: One line per schedule of :mod:`lldd_core.analysis.control` (its module doc), in the order of ``SCHEDULES``.
SCHEDULE_LINES: dict[str, str] = {
    "llv": "least energy: u = Δy·h/‖h‖² over every layer with a direction (the surrogate's minimum-norm "
           "solution of hᵀu = Δy)",
    "uniform": "the same u at every layer with a direction: Δy / Σ h",
    "last": "one layer, the last (L−1): u = Δy / h_(L−1)",
    "middle": "one layer, the middle (L//2): u = Δy / h_(L//2)",
    "early": "one layer, a quarter of the depth (L//4, or the first layer with a direction)",
    "random": "one seeded random layer with a direction",
}
#: The colour roles (:data:`~lldd_core.plots.common.ROLE_HUES`) of the steering methods (the schedules use their names).
METHOD_ROLES: dict[str, str] = {"additive": "additive", "llv": "steer_llv", "jacobian": "jacobian", "lqr": "lqr"}
#: Background of the tokens that only the steered text has (readable text in light and dark themes).
DIFF_COLOR = "#ffd166"
DIFF_TEXT = "#111111"
NOT_REACHED = "not reached"
#: Most target shifts one request may ask for (each costs a bisection per schedule).
MAX_TARGETS = 16
_MARGIN = {"l": 60, "r": 20, "t": 60, "b": 50}


# --- control: inputs and numbers -------------------------------------------------------------------
def parse_targets(text: str) -> list[float]:
    """``"0.5, 1, 2"`` -> ``[0.5, 1.0, 2.0]`` (commas, semicolons or spaces); duplicates dropped, order kept.

    Raises :class:`~lldd_core.errors.InputError` naming the offending entry for anything else than
    one to :data:`MAX_TARGETS` finite non-zero numbers.
    """
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise InputError("Give one or more target shifts Δy, e.g. '0.5, 1, 2'.")
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"'{part}' is not a number: give target shifts Δy as numbers, e.g. '0.5, 1, 2'.") from None
        if not math.isfinite(value) or value == 0:
            raise InputError(f"Target shifts Δy must be finite and non-zero; got '{part}'.")
        if value not in values:
            values.append(value)
    if len(values) > MAX_TARGETS:
        raise InputError(f"Give at most {MAX_TARGETS} target shifts; got {len(values)}.")
    return values


def relative_energy(result: ControlResult) -> np.ndarray:
    """Energy of each schedule over the LLV schedule's for the same target, ``[S, N]`` (NaN where either failed)."""
    energy = np.asarray(result.energy, dtype=float)
    llv = energy[list(result.names).index("llv")]
    with np.errstate(invalid="ignore", divide="ignore"):
        return energy / llv[None, :]


def schedule_color(theme: Theme, name: str) -> str:
    """A schedule's colour (a schedule without a role of its own: the theme's "other")."""
    return theme.color(name if name in ROLE_HUES else "other")


def method_color(theme: Theme, method: str) -> str:
    """A steering method's colour (a registered method without a role of its own: the theme's "other")."""
    return theme.color(METHOD_ROLES.get(method, "other"))


def _target_label(dy: float) -> str:
    return f"Δy = {dy:g}"


def _order(result: ControlResult) -> list[int]:
    """Target indices sorted by Δy (the lines' x order)."""
    return sorted(range(len(result.targets)), key=lambda j: float(result.targets[j]))


# --- control: figures ------------------------------------------------------------------------------
def energy_figure(result: ControlResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Energy ``‖u‖²`` of each validated schedule against the target ``Δy`` (one line per schedule; log y labelled
    at powers of ten, :func:`~lldd_core.plots.common.log_axis`)."""
    order = _order(result)
    x = [float(result.targets[j]) for j in order]
    energy = np.asarray(result.energy, dtype=float)
    fig = go.Figure()
    for s, name in enumerate(result.names):
        fig.add_trace(go.Scatter(
            x=x, y=energy[s, order], mode="lines+markers", name=name,
            line={"color": schedule_color(theme, name)},
            hovertemplate="Δy %{x:g}<br>energy %{y:.4g}<extra>" + plotly_text(name) + "</extra>",
        ))
    failed = int((~np.asarray(result.reached, dtype=bool)).sum())
    note = f"; {failed} not reached (gaps)" if failed else ""
    fig.update_layout(
        title={"text": f"Energy ‖u‖² to reach Δy in the full model{note}"},
        xaxis={"title": {"text": "target shift Δy"}, "tickmode": "array", "tickvals": x,
               "ticktext": [f"{v:g}" for v in x]},
        yaxis={"title": {"text": "energy ‖u‖²"}, **log_axis(energy)},
        height=420, margin=_MARGIN, hovermode="x unified", legend={"title": {"text": "schedule"}},
    )
    return theme.apply(fig)


def relative_energy_figure(result: ControlResult, theme: Theme = DASHBOARD) -> go.Figure:
    """Energy relative to the LLV schedule: grouped bars per target, one bar per schedule (log y, 1 marked)."""
    order = _order(result)
    labels = [_target_label(float(result.targets[j])) for j in order]
    ratio = relative_energy(result)
    fig = go.Figure()
    for s, name in enumerate(result.names):
        fig.add_trace(go.Bar(
            x=labels, y=ratio[s, order], name=name, marker={"color": schedule_color(theme, name)},
            hovertemplate="%{x}<br>%{y:.3g} × the LLV energy<extra>" + plotly_text(name) + "</extra>",
        ))
    fig.add_hline(y=1.0, line={"color": theme.rgba("current", 0.8), "dash": "dash"})
    fig.update_layout(
        title={"text": "Energy relative to the LLV schedule (missing bar: not reached)"},
        xaxis={"title": {"text": "target"}, "type": "category"},
        yaxis={"title": {"text": "energy / LLV energy"}, **log_axis(np.append(ratio, 1.0))},
        barmode="group", height=420, margin=_MARGIN, legend={"title": {"text": "schedule"}},
    )
    return theme.apply(fig)


def schedule_figure(result: ControlResult, target: int, surrogate: bool = False, theme: Theme = DASHBOARD) -> go.Figure:
    """The schedules for target index ``target`` as bars over the injection layers, one bar group per layer.

    ``surrogate``: the schedules that reach ``Δy`` in the surrogate instead of the validated ones
    (amplitude × surrogate schedule). Legend entries of schedules that failed say so.
    """
    if not 0 <= target < len(result.targets):
        raise ValueError(f"target must lie in 0..{len(result.targets) - 1}; got {target}")
    u = np.asarray(result.surrogate_u if surrogate else result.u, dtype=float)
    reached = np.asarray(result.reached, dtype=bool)
    layers = list(range(int(result.n_layers)))
    fig = go.Figure()
    for s, name in enumerate(result.names):
        label = name if reached[s, target] else f"{name} ({NOT_REACHED})"
        fig.add_trace(go.Bar(
            x=layers, y=u[s, target], name=label, marker={"color": schedule_color(theme, name)},
            hovertemplate="layer %{x}<br>u %{y:.4g}<extra>" + plotly_text(label) + "</extra>",
        ))
    kind = "in the surrogate" if surrogate else "validated in the full model"
    fig.update_layout(
        title={"text": f"Schedules u_l for {_target_label(float(result.targets[target]))} ({kind})"},
        xaxis={"title": {"text": layer_axis("injection x_l ← x_l + u_l v_l")}, "tickmode": "array", "tickvals": layers},
        yaxis={"title": {"text": "u_l"}}, barmode="group", height=420, margin=_MARGIN,
        legend={"title": {"text": "schedule"}},
    )
    return theme.apply(fig)


def gains_figure(result: ControlResult, theme: Theme = DASHBOARD) -> go.Figure:
    """The surrogate's gains ``h_l`` over layers (0 where a layer has no concept direction)."""
    layers = list(range(int(result.n_layers)))
    h = np.asarray(result.gains, dtype=float)
    with_direction = {int(k) for k in result.layers}
    colors = [theme.color("llv") if k in with_direction else theme.color("unsteered") for k in layers]
    fig = go.Figure(go.Bar(
        x=layers, y=h, marker={"color": colors}, name="h",
        hovertemplate="layer %{x}<br>h %{y:.4g}<extra></extra>",
    ))
    missing = [k for k in layers if k not in with_direction]
    note = f" (no direction at layer {', '.join(map(str, missing))})" if missing else ""
    fig.update_layout(
        title={"text": f"Surrogate gains h_l: predicted readout change per unit u_l, order {result.order}{note}"},
        xaxis={"title": {"text": layer_axis("injection at x_l")}, "tickmode": "array", "tickvals": layers},
        yaxis={"title": {"text": "gain h_l"}}, height=360, margin=_MARGIN, showlegend=False,
    )
    return theme.apply(fig)


# --- control: tables --------------------------------------------------------------------------------
def control_table(result: ControlResult) -> pd.DataFrame:
    """One row per (schedule, target): amplitude, energies, achieved shift, whether it was reached, ratio to LLV."""
    ratio = relative_energy(result)
    reached = np.asarray(result.reached, dtype=bool)
    rows = []
    for s, name in enumerate(result.names):
        for j in range(len(result.targets)):
            dy = float(result.targets[j])
            achieved = float(result.achieved[s, j])
            rows.append({
                "schedule": name,
                "target Δy": dy,
                "amplitude": float(result.amplitude[s, j]),
                "energy ‖u‖²": float(result.energy[s, j]),
                "energy / LLV": float(ratio[s, j]),
                "surrogate energy": float(result.surrogate_energy[s, j]),
                "achieved shift": achieved,
                "relative miss": abs(achieved - dy) / abs(dy),
                "reached": "yes" if reached[s, j] else NOT_REACHED,
                "layers used": int(np.count_nonzero(np.nan_to_num(np.asarray(result.surrogate_u[s, j], dtype=float)))),
            })
    return pd.DataFrame(rows)


def schedules_table(result: ControlResult) -> pd.DataFrame:
    """Long table for CSV: one row per (schedule, target, layer) with the validated and surrogate ``u_l``."""
    rows = []
    for s, name in enumerate(result.names):
        for j, dy in enumerate(result.targets):
            for layer in range(int(result.n_layers)):
                rows.append({"schedule": name, "target Δy": float(dy), "layer l (x_l)": layer,
                             "u (validated)": float(result.u[s, j, layer]),
                             "u (surrogate)": float(result.surrogate_u[s, j, layer]),
                             "gain h": float(result.gains[layer]),
                             "reached": bool(result.reached[s, j])})
    return pd.DataFrame(rows)


# --- steering: differences and text as HTML ---------------------------------------------------------
def diff_marks(unsteered: Sequence[str], steered: Sequence[str]) -> tuple[list[bool], list[bool]]:
    """Which tokens only one side has, by :class:`difflib.SequenceMatcher` over the token lists.

    Returns (marks over ``unsteered``, marks over ``steered``): ``True`` for a token in a replaced,
    deleted (unsteered side) or inserted (steered side) run.
    """
    a, b = list(unsteered), list(steered)
    marks_a, marks_b = [False] * len(a), [False] * len(b)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for i in range(i1, i2):
            marks_a[i] = True
        for j in range(j1, j2):
            marks_b[j] = True
    return marks_a, marks_b


#: Characters that Markdown (and Streamlit's extensions: math, emoji shortcodes, colours) could
#: interpret, written as numeric entities so the text shows literally.
_ENTITIES: dict[str, str] = {
    **{c: f"&#{ord(c)};" for c in "\\`*_{}[]#~:$|"},
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "\n": "<br>",
}


def escape_text(text: str) -> str:
    """``text`` as inert HTML for ``st.markdown(..., unsafe_allow_html=True)``: HTML and Markdown
    characters become entities, line breaks ``<br>`` (the markup never holds a blank line)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(_ENTITIES.get(c, c) for c in text)


def tokens_html(tokens: Sequence[str], marks: Sequence[bool] | None = None, color: str = DIFF_COLOR) -> str:
    """The tokens as one HTML block (spaces kept); marked tokens on a ``color`` background."""
    marks = [False] * len(tokens) if marks is None else list(marks)
    if len(marks) != len(tokens):
        raise ValueError(f"{len(marks)} marks for {len(tokens)} tokens")
    if not tokens:
        return '<div class="lldd-text"><em>(no new tokens)</em></div>'
    parts = []
    for token, marked in zip(tokens, marks):
        text = escape_text(token)
        if marked:
            text = f'<span style="background-color: {color}; color: {DIFF_TEXT}; border-radius: 3px">{text}</span>'
        parts.append(text)
    return f'<div class="lldd-text" style="white-space: pre-wrap; line-height: 1.6">{"".join(parts)}</div>'


def text_html(text: str) -> str:
    """A plain text (e.g. one being streamed) as the same HTML block, nothing marked."""
    return tokens_html([text] if text else [])


def differing(marks: Sequence[bool]) -> int:
    """How many tokens are marked."""
    return int(sum(bool(m) for m in marks))


# --- steering: figures and tables -------------------------------------------------------------------
def has_readout(results: Sequence[SteeringResult]) -> bool:
    """Whether any result carries a concept readout (it ran with a dataset and generated tokens)."""
    return any(np.asarray(r.readout_unsteered).size or np.asarray(r.readout_steered).size for r in results)


def mean_readouts(results: Sequence[SteeringResult]) -> dict[str, float]:
    """Mean readout over the generated tokens: ``"unsteered"`` (of the first result), then each method (NaN when empty)."""

    def mean(values: np.ndarray) -> float:
        values = np.asarray(values, dtype=float)
        return float(values.mean()) if values.size else float("nan")

    out = {"unsteered": mean(results[0].readout_unsteered)} if results else {}
    out.update({r.method: mean(r.readout_steered) for r in results})
    return out


def _readout_trace(values: np.ndarray, tokens: Sequence[str], name: str, color: str, dash: str | None = None) -> go.Scatter:
    values = np.asarray(values, dtype=float)
    return go.Scatter(
        x=list(range(1, values.size + 1)), y=values, mode="lines+markers", name=name,
        line={"color": color, "dash": dash}, customdata=[plotly_text(display_token(t)) for t in list(tokens)[:values.size]],
        hovertemplate="token %{x}: %{customdata}<br>readout %{y:.4g}<extra>" + plotly_text(name) + "</extra>",
    )


def readout_figure(results: Sequence[SteeringResult], theme: Theme = DASHBOARD) -> go.Figure:
    """The concept readout ``v_Lᵀ x_L`` at each generated token: the unsteered text (of the first result;
    every result has the same one) and each method's steered text, all read by the unsteered model."""
    fig = go.Figure()
    if results:
        first = results[0]
        fig.add_trace(_readout_trace(first.readout_unsteered, first.unsteered_tokens, "unsteered", theme.color("unsteered"),
                                     "dash"))
    for r in results:
        fig.add_trace(_readout_trace(r.readout_steered, r.steered_tokens, f"steered: {r.method}",
                                     method_color(theme, r.method)))
    fig.update_layout(
        title={"text": "Concept readout along the generated tokens (read by the unsteered model)"},
        xaxis={"title": {"text": "generated token"}},
        yaxis={"title": {"text": "readout v_Lᵀ x_L (before the final norm)"}},
        height=400, margin=_MARGIN, hovermode="x unified", legend={"title": {"text": "text"}},
    )
    return theme.apply(fig)


def steering_schedule_figure(results: Sequence[SteeringResult], theme: Theme = DASHBOARD) -> go.Figure:
    """Per-layer amplitudes each method applied (additive: ``α`` at its layers; llv: ``u_l``), grouped bars."""
    fig = go.Figure()
    n_layers = 0
    for r in results:
        sched = np.asarray(r.schedule, dtype=float)
        if not sched.size:
            continue
        n_layers = max(n_layers, sched.size)
        fig.add_trace(go.Bar(
            x=list(range(sched.size)), y=sched, name=r.method, marker={"color": method_color(theme, r.method)},
            hovertemplate="layer %{x}<br>amplitude %{y:.4g}<extra>" + plotly_text(r.method) + "</extra>",
        ))
    fig.update_layout(
        title={"text": "Amplitude added along the concept direction at each layer (x_l ← x_l + a_l v_l)"},
        xaxis={"title": {"text": layer_axis("residual stream x_l, entering block l")}, "tickmode": "array",
               "tickvals": list(range(n_layers))},
        yaxis={"title": {"text": "amplitude a_l"}}, barmode="group", height=360, margin=_MARGIN,
        legend={"title": {"text": "method"}},
    )
    return theme.apply(fig)


def has_schedule(results: Sequence[SteeringResult]) -> bool:
    """Whether any result applied a per-layer schedule (additive, llv)."""
    return any(np.asarray(r.schedule).size for r in results)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def params_table(results: Sequence[SteeringResult]) -> pd.DataFrame:
    """One row per (method, parameter) of the parameters each method ran with (``result.params``)."""
    rows = [{"method": r.method, "parameter": str(k), "value": _format_value(v)}
            for r in results for k, v in r.params.items()]
    return pd.DataFrame(rows, columns=["method", "parameter", "value"])


def settings_line(result: SteeringResult) -> str:
    """The generation settings in one phrase."""
    s = result.settings
    decoding = (f"sampling (temperature {s['temperature']:g}, top-p {s['top_p']:g}, seed {s['seed']})"
                if s.get("do_sample") else "greedy")
    return f"{s['max_new_tokens']} new tokens at most · {decoding}"


def readout_table(results: Sequence[SteeringResult]) -> pd.DataFrame:
    """Long table for CSV: one row per (text, generated token) with the token and its readout (NaN without one)."""
    rows = []
    texts: list[tuple[str, Sequence[str], np.ndarray]] = []
    if results:
        texts.append(("unsteered", results[0].unsteered_tokens, np.asarray(results[0].readout_unsteered, dtype=float)))
    texts += [(r.method, r.steered_tokens, np.asarray(r.readout_steered, dtype=float)) for r in results]
    for name, tokens, readout in texts:
        for i, token in enumerate(tokens):
            rows.append({"text": name, "token index": i + 1, "token": token,
                         "readout": float(readout[i]) if i < readout.size else float("nan")})
    return pd.DataFrame(rows, columns=["text", "token index", "token", "readout"])
