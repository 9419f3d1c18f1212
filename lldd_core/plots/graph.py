"""Figures and tables of exact attribution graphs (:class:`~lldd_core.analysis.graph_result.GraphResult`).

The layered picture: prompt positions across, depth up — embeddings at the bottom (``x_0``), MLP
neurons at their block, the target logits on top (above the last position) and the bias nodes, the
constants that close every node's sum, in a column of their own on the left. Node size grows with
influence on the targets (with ``|activation|`` for an unpruned graph); edges are the strongest
``max_edges`` by ``|weight|``, their width by ``|weight|`` and their colour by sign. A neuron's hover
shows its decodings (:mod:`lldd_core.analysis.graph_decode`): the tokens its output raises and lowers,
and the tokens whose embeddings its input (and gate) direction reads, both signs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..analysis.graph_result import KIND_BIAS, KIND_EMBEDDING, KIND_LOGIT, KIND_NEURON
from ..layering import block_axis
from .common import DASHBOARD, Theme, plotly_text, token_labels

if TYPE_CHECKING:
    from ..analysis.graph_result import GraphResult

#: Labels and colour roles (:data:`~lldd_core.plots.common.ROLE_HUES`) by node kind (indexed by KIND_EMBEDDING .. KIND_LOGIT).
KIND_LABELS = ("embedding", "bias", "MLP neuron", "target logit")
KIND_ROLES = ("embedding", "bias_node", "neuron", "logit")
#: Width of the legend's edge samples (px): the drawn edges are mostly thin and faint, a sample must be seen.
LEGEND_EDGE_WIDTH = 4.0
#: Edge widths in px for the weight terciles (thin, middle, thick).
EDGE_WIDTHS = (0.6, 1.6, 3.2)
#: What each decoding kind says (hover lines and the pinned-node table).
DECODING_LABELS = {"out+": "raises (output)", "out-": "lowers (output)", "in+": "reads + (input)",
                   "in-": "reads − (input)", "gate+": "gate + (input)", "gate-": "gate − (input)"}


def node_xy(graph: GraphResult) -> tuple[np.ndarray, np.ndarray]:
    """Plot coordinates of every node: ``x`` the position (neurons of one (layer, position) spread
    across ±0.4 of it, biases at ``x = -1``), ``y`` the layer (embeddings ``-1``, logits ``n_layers``)."""
    kind, layer, pos = graph.node_kind.astype(int), graph.node_layer.astype(int), graph.node_position.astype(int)
    x = pos.astype(float)
    y = layer.astype(float)
    T = len(graph.token_ids)
    x[kind == KIND_BIAS] = -1.0
    x[kind == KIND_LOGIT] = T - 1
    for group in (KIND_NEURON, KIND_LOGIT):  # several neurons or logits in one cell: spread them so each can be hovered
        sel = np.nonzero(kind == group)[0]
        cells: dict[tuple[int, int], list[int]] = {}
        for i in sel:
            cells.setdefault((int(y[i]), int(x[i])), []).append(int(i))
        for members in cells.values():
            if len(members) > 1:
                x[members] = x[members] + np.linspace(-0.4, 0.4, len(members))
    return x, y


def decoding_hover(graph: GraphResult, node: int, rows: dict[tuple[int, int], int] | None = None) -> str | None:
    """A neuron's decodings as hover lines (plotly-escaped tokens); ``None`` when it has none."""
    dec = graph.decoding(node, rows)
    if dec is None:
        return None
    return "<br>".join(f"{DECODING_LABELS.get(k, k)}: " + " ".join(plotly_text(repr(t)) for t, _ in v)
                       for k, v in dec.items())


def decodings_table(graph: GraphResult, node: int) -> pd.DataFrame | None:
    """A neuron's decodings, one row per kind: the tokens best first and their scores (logit per unit value
    for the output, cosine with the embeddings for the input); ``None`` when it has none."""
    dec = graph.decoding(node)
    if dec is None:
        return None
    return pd.DataFrame({"decoding": [DECODING_LABELS.get(k, k) for k in dec],
                         "tokens": [" ".join(repr(t) for t, _ in v) for v in dec.values()],
                         "scores": [" ".join(f"{s:.3g}" for _, s in v) for v in dec.values()]})


def node_labels(graph: GraphResult, decodings: Mapping[int, str] | None = None) -> list[str]:
    """Hover text per node: its id and kind, activation, influence, and its decodings (``decodings[i]``
    when given, else the graph's own, :func:`decoding_hover`)."""
    tokens = graph.tokens or [str(t) for t in graph.token_ids]
    rows = graph.decoding_rows()
    out = []
    for i in range(len(graph.node_kind)):
        kind, pos = int(graph.node_kind[i]), int(graph.node_position[i])
        head = f"<b>{plotly_text(graph.node_id(i))}</b> · {KIND_LABELS[kind]}"
        if kind in (KIND_EMBEDDING, KIND_NEURON) and 0 <= pos < len(tokens):
            head += f" at {plotly_text(repr(tokens[pos]))}"
        if kind == KIND_LOGIT:
            j = graph.target_ids.index(int(graph.node_index[i]))
            name = graph.target_tokens[j] if graph.target_tokens else str(graph.node_index[i])
            head += f" {plotly_text(repr(name))} (p = {graph.target_probs[j]:.3f})"
        text = f"{head}<br>activation {graph.node_activation[i]:.4g} · influence {graph.node_influence[i]:.3g}"
        extra = decodings.get(i) if decodings is not None else decoding_hover(graph, i, rows)
        if extra:
            text += "<br>" + extra
        out.append(text)
    return out


def _node_size(graph: GraphResult) -> np.ndarray:
    score = np.abs(graph.node_influence) if np.any(graph.node_influence) else np.abs(graph.node_activation)
    top = float(score.max()) if score.size and score.max() > 0 else 1.0
    return 6.0 + 18.0 * np.sqrt(score / top)


def strongest_edges(graph: GraphResult, max_edges: int, among: np.ndarray | None = None) -> np.ndarray:
    """Edge numbers of the ``max_edges`` edges of largest ``|weight|`` (of ``among``, default all), strongest first."""
    among = np.arange(graph.edge_weight.size) if among is None else np.asarray(among)
    return among[np.argsort(-np.abs(graph.edge_weight[among]), kind="stable")[:max_edges]]


def graph_figure(graph: GraphResult, *, max_edges: int = 400, decodings: Mapping[int, str] | None = None,
                 pinned: Sequence[int] = (), nodes: Sequence[int] | None = None,
                 theme: Theme = DASHBOARD) -> go.Figure:
    """The layered attribution graph (module doc). ``nodes``: draw only these (and the edges between
    them), e.g. a pinned subgraph; ``pinned`` nodes get a black ring; ``decodings`` replace the neurons'
    own decodings in the hover.

    Node markers carry their node number as ``customdata`` (a page's click selection reads it). The legend's
    edge entries are samples of their own (opaque, :data:`LEGEND_EDGE_WIDTH` wide; a click toggles every edge of
    that sign), and its node entries are drawn at one size.
    """
    x, y = node_xy(graph)
    shown = np.ones(len(graph.node_kind), dtype=bool) if nodes is None else np.isin(
        np.arange(len(graph.node_kind)), list(nodes))
    edges = strongest_edges(graph, max_edges, np.nonzero(shown[graph.edge_source] & shown[graph.edge_target])[0])
    fig = go.Figure()
    w = np.abs(graph.edge_weight[edges])
    cuts = np.quantile(w, [1 / 3, 2 / 3]) if w.size else np.zeros(2)
    top = float(w.max()) if w.size else 1.0
    for sign, role, name in ((1, "positive", "positive edge"), (-1, "negative", "negative edge")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", hoverinfo="skip", name=name, legendgroup=name,
                                 line={"color": theme.color(role), "width": LEGEND_EDGE_WIDTH}, showlegend=True))
        for band, width in enumerate(EDGE_WIDTHS):
            sel = edges[(np.sign(graph.edge_weight[edges]) == sign) & (np.digitize(w, cuts) == band)]
            if not sel.size:
                continue
            xs = np.column_stack([x[graph.edge_source[sel]], x[graph.edge_target[sel]], np.full(sel.size, np.nan)])
            ys = np.column_stack([y[graph.edge_source[sel]], y[graph.edge_target[sel]], np.full(sel.size, np.nan)])
            alpha = 0.25 + 0.6 * float(np.abs(graph.edge_weight[sel]).mean()) / top
            fig.add_trace(go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="lines", hoverinfo="skip",
                                     line={"color": theme.rgba(role, round(alpha, 2)), "width": width},
                                     name=name, legendgroup=name, showlegend=False))
    labels, size = node_labels(graph, decodings), _node_size(graph)
    ring = set(int(i) for i in pinned)
    for kind, (label, role) in enumerate(zip(KIND_LABELS, KIND_ROLES, strict=True)):
        sel = np.nonzero((graph.node_kind == kind) & shown)[0]
        if not sel.size:
            continue
        fig.add_trace(go.Scatter(
            x=x[sel], y=y[sel], mode="markers", name=label, customdata=sel.tolist(), text=[labels[i] for i in sel],
            hovertemplate="%{text}<extra></extra>",
            marker={"size": size[sel], "color": theme.color(role), "opacity": 0.9,
                    "line": {"color": ["black" if int(i) in ring else "white" for i in sel],
                             "width": [3 if int(i) in ring else 1 for i in sel]}}))
    T, L = len(graph.token_ids), graph.n_layers
    tokens = graph.tokens or [str(t) for t in graph.token_ids]
    fig.update_layout(
        title={"text": f"Attribution graph: {len(edges)} strongest of {graph.edge_weight.size} edges, "
                       f"replacement score {graph.replacement_score:.3f}"},
        xaxis={"title": {"text": "prompt position"}, "tickmode": "array", "tickvals": [-1, *range(T)],
               "ticktext": ["bias", *token_labels(tokens)], "range": [-1.6, T - 0.4], "zeroline": False},
        yaxis={"title": {"text": block_axis("its MLP neurons; x_0 below, logits above")}, "tickmode": "array",
               "tickvals": [-1, *range(L), L],
               "ticktext": ["x_0 (embeddings)", *[f"block {b} MLP" for b in range(L)], "logits"],
               "range": [-1.6, L + 0.6], "zeroline": False},
        legend={"orientation": "h", "y": -0.18, "itemsizing": "constant"}, height=max(420, 90 * (L + 2)),
        margin={"l": 120, "r": 20, "t": 60}, hovermode="closest", clickmode="event+select",
    )
    return theme.apply(fig)


def node_edges_table(graph: GraphResult, node: int, direction: str = "in", limit: int = 10) -> pd.DataFrame:
    """A node's strongest incoming (``direction="in"``) or outgoing (``"out"``) edges: the other node's id,
    kind and number, the weight and its share of the node's total ``|weight|`` that way."""
    if direction not in ("in", "out"):
        raise ValueError(f"direction is 'in' or 'out', not {direction!r}")
    mine = graph.edge_target if direction == "in" else graph.edge_source
    other = graph.edge_source if direction == "in" else graph.edge_target
    sel = np.nonzero(mine == node)[0]
    sel = sel[np.argsort(-np.abs(graph.edge_weight[sel]), kind="stable")]
    total = float(np.abs(graph.edge_weight[sel]).sum()) or 1.0
    sel = sel[:limit]
    return pd.DataFrame({
        "node": [graph.node_id(int(graph.edge_source[e] if direction == "in" else graph.edge_target[e])) for e in sel],
        "kind": [KIND_LABELS[int(graph.node_kind[other[e]])] for e in sel],
        "number": [int(other[e]) for e in sel],
        "weight": graph.edge_weight[sel],
        "share": np.abs(graph.edge_weight[sel]) / total,
    })
