"""Figures and tables of the Steering lab (:mod:`lldd_core.steering.lab`): success against fluency per method.

Data in, figure or table out, no streamlit. Builders take a :class:`~lldd_core.steering.lab.answers.SweepResult`
and never mutate it.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from ..steering.lab.answers import SweepResult
from ..steering.lab.knobs import knob
from .common import DASHBOARD, Theme, log_axis, plotly_text

#: The colour role of each method (:data:`lldd_core.plots.common.ROLE_HUES`, as the Steering page draws them).
METHOD_ROLES = {"additive": "additive", "llv": "steer_llv", "jacobian": "jacobian", "lqr": "lqr"}
#: Columns of :func:`rows_table`, in order.
TABLE_COLUMNS = ("method", "layer", "knob", "strength", "success", "perplexity", "repetition", "kl", "readout_shift",
                 "verdict share", "probe share", "judge share", "pareto", "example")


def setting_label(row: dict) -> str:
    """``additive x_2 α=8`` / ``llv Δy=20``: how a figure or table names one cell."""
    where = "" if row.get("layer") is None else f" x_{row['layer']}"
    return f"{row['method']}{where} {knob(row['method']).symbol}={row['strength']:g}"


def pareto_figure(result: SweepResult, *, theme: Theme = DASHBOARD) -> go.Figure:
    """Success (share of target-class texts) against perplexity per method: every cell as a point, the Pareto front
    as a line, the recommended setting ringed, the unsteered baseline as a star and the fluency budget dashed."""
    fig = go.Figure()
    for method in result.settings["methods"]:
        idx = [i for i, r in enumerate(result.rows) if r["method"] == method]
        color = theme.color(METHOD_ROLES.get(method, "other"))
        rows = [result.rows[i] for i in idx]
        fig.add_trace(go.Scatter(
            x=[r["perplexity"] for r in rows], y=[r["success"] for r in rows], mode="markers", name=method,
            legendgroup=method, marker={"color": color, "size": 8, "opacity": 0.55},
            text=[plotly_text(setting_label(r)) for r in rows],
            hovertemplate="%{text}<br>perplexity %{x:.4g}<br>success %{y:.3f}<extra></extra>"))
        front = [result.rows[i] for i in result.pareto.get(method, [])]
        if front:
            fig.add_trace(go.Scatter(
                x=[r["perplexity"] for r in front], y=[r["success"] for r in front], mode="lines+markers",
                name=f"{method} Pareto front", legendgroup=method, line={"color": color, "width": 2},
                marker={"color": color, "size": 9}, text=[plotly_text(setting_label(r)) for r in front],
                hovertemplate="%{text}<br>perplexity %{x:.4g}<br>success %{y:.3f}<extra>front</extra>"))
        rec = result.recommended.get(method)
        if rec is not None:
            fig.add_trace(go.Scatter(
                x=[rec["perplexity"]], y=[rec["success"]], mode="markers", name=f"{method} recommended",
                legendgroup=method, marker={"color": "rgba(0,0,0,0)", "size": 18, "line": {"color": color, "width": 3}},
                text=[plotly_text(setting_label(rec))],
                hovertemplate="recommended: %{text}<extra></extra>"))
    base = result.unsteered
    fig.add_trace(go.Scatter(x=[base["perplexity"]], y=[base["success"]], mode="markers", name="unsteered",
                             marker={"symbol": "star", "size": 14, "color": theme.color("unsteered")},
                             hovertemplate="unsteered<br>perplexity %{x:.4g}<br>success %{y:.3f}<extra></extra>"))
    budget = result.settings["fluency_budget"] * base["perplexity"]
    if math.isfinite(budget):
        fig.add_vline(x=budget, line={"dash": "dash", "color": theme.color("paper")}, annotation_text="fluency budget")
    fig.add_hline(y=result.settings["success_target"], line={"dash": "dot", "color": theme.color("paper")},
                  annotation_text="success target")
    perplexities = [r["perplexity"] for r in result.rows] + [base["perplexity"]] + ([budget] if math.isfinite(budget) else [])
    fig.update_layout(title=f"Success ({result.success_by}) against fluency: steering towards {result.target!r}",
                      xaxis={"title": {"text": "perplexity of the continuation (unsteered model, log scale)"},
                             **log_axis(perplexities)},
                      yaxis_title="success: share of texts of the target class",
                      yaxis_range=[-0.05, 1.05], margin={"l": 60, "r": 20, "t": 60, "b": 50}, height=480)
    return theme.apply(fig)


def rows_table(result: SweepResult) -> pd.DataFrame:
    """One row per cell (unsteered first): the :data:`TABLE_COLUMNS`."""
    on_front = {i for idx in result.pareto.values() for i in idx}
    lines = [{"method": "unsteered", "layer": None, "knob": "", "strength": 0.0,
              **{k: result.unsteered[k] for k in ("success", "perplexity", "repetition", "kl", "readout_shift")},
              "verdict share": None, "probe share": None, "judge share": None, "pareto": False,
              "example": result.unsteered_texts[0] if result.unsteered_texts else ""}]
    for i, (row, extra) in enumerate(zip(result.rows, result.details)):
        lines.append({**{k: row[k] for k in ("method", "layer")}, "knob": knob(row["method"]).symbol,
                      **{k: row[k] for k in ("strength", "success", "perplexity", "repetition", "kl", "readout_shift")},
                      "verdict share": extra["verdict_success"], "probe share": extra["probe_success"],
                      "judge share": extra["judge_success"], "pareto": i in on_front, "example": extra["example"]})
    return pd.DataFrame(lines, columns=list(TABLE_COLUMNS))


def recommendation_line(method: str, rec: dict | None, result: SweepResult) -> str:
    """One sentence: the recommended setting of ``method``, or why there is none."""
    s = result.settings
    if rec is None:
        return (f"**{method}**: no swept setting reaches success {s['success_target']:g} within perplexity "
                f"{s['fluency_budget']:g} × unsteered ({s['fluency_budget'] * result.unsteered['perplexity']:.4g}).")
    return (f"**{method}**: {setting_label(rec)} — success {rec['success']:.3f}, perplexity {rec['perplexity']:.4g}, "
            f"repetition {rec['repetition']:.3f}, KL {rec['kl']:.4g}, readout shift {rec['readout_shift']:+.4g}.")
