"""Graph view: the exact attribution graph of the next-token logits.

UI only: a prompt and the graph settings -> ``get_service().graph(...)`` -> the layered figure of
:mod:`lldd_core.plots.graph` (click nodes to pin them), the pinned nodes' strongest inputs and
outputs and (neurons) decodings, the pinned subgraph, and what scaling or zeroing the pinned neurons
does to the target logits: the graph's linear prediction beside the frozen model's exact response and
the change measured in the full model (``get_service().graph_intervention``). Every node's value is the sum of its incoming edges:
no transcoder and no error nodes (the detached model makes every MLP neuron a linear node).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from lldd_core.analysis.graph_result import KIND_LOGIT, KIND_NEURON, GraphResult
from lldd_core.analysis.settings import GraphSettings
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.graph import decodings_table, graph_figure, node_edges_table
from lldd_core.plots.spectra import file_slug
from lldd_core.ranges import EDGE_THRESHOLD, MAX_NODES, NODE_THRESHOLD
from lldd_core.service import get_service
from lldd_core.store.export import csv_text
from pages.common.forms import prompt_area, view_start
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, kept, plural, result_or_hint, run_with_status, table

DEFAULT_PROMPT = "The Golden Gate Bridge is in"
#: Session-state keys: the last graph (a :class:`Shown`) and the pinned node numbers.
RESULT_KEY = "graph.last"
PINNED_KEY = "gr_pinned"

EXPLANATION = """
**Nodes**: the input embeddings (one per position), every MLP neuron (layer, position, neuron: the value
entering the MLP's output projection), the bias constants, and the target logits (the raw logit of each
target token at the last position). **Edges** `s → t`: the direct effect of `s` on `t` through the frozen
residual stream and attention (OV) paths, `value(s) × ∂t/∂s` — never through another neuron. With norms,
activations and attention detached the map is linear, so **every node's value is exactly the sum of its
incoming edges** (no error nodes). **Pruning** keeps the nodes and edges that carry the stated shares of the
influence on the targets; the *replacement score* is the share of the target logits the pruned graph keeps.
**Decodings** (hover a neuron, or pin it): the tokens its output vector (its column of the MLP's output
projection) raises and lowers through the unembedding, and the tokens whose embeddings its input direction
(its row of the input projection, and of the gate where there is one) reads, by cosine similarity.
"""


def request_form() -> tuple[bool, str, GraphSettings]:
    """The prompt and the graph settings (defaults: :class:`~lldd_core.analysis.settings.GraphSettings`)."""
    G = GraphSettings
    with st.form("graph_form", border=True):
        prompt = prompt_area("gr_prompt", DEFAULT_PROMPT)
        c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
        target = c1.text_input("Target token (empty: the top next tokens)", value="", key="gr_target",
                               help="One token, e.g. ' San' (with its leading space); empty: the model's top 3.")
        prune = c2.toggle("Prune", value=True, key="gr_prune", help="Keep only what carries the influence.")
        node = c3.slider("Node threshold", **NODE_THRESHOLD.widget(), value=G.default("node_threshold"), step=0.01,
                         key="gr_node_threshold", help=NODE_THRESHOLD.sentence())
        edge = c4.slider("Edge threshold", **EDGE_THRESHOLD.widget(), value=G.default("edge_threshold"), step=0.01,
                         key="gr_edge_threshold", help=EDGE_THRESHOLD.sentence())
        max_nodes = st.number_input("Neurons visited (most influential first)", **MAX_NODES.widget(),
                                    value=G.default("max_nodes"), step=64, key="gr_max_nodes")
        submitted = st.form_submit_button("Compute graph", type="primary", key="gr_compute")
    fields("gr_target", "gr_node_threshold", "gr_edge_threshold", "gr_max_nodes", "gr_prune")
    settings = GraphSettings(target=target or None, node_threshold=float(node) if prune else None,
                             edge_threshold=float(edge), max_nodes=int(max_nodes))
    return submitted, prompt, settings


def compute(spec: ModelSpec, prompt: str, settings: GraphSettings) -> Shown | None:
    computed = run_with_status("attribution graph",
                               lambda progress: get_service().graph(spec, prompt, settings, progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, spec, prompt)


def show_metrics(shown: Shown) -> None:
    g: GraphResult = shown.result
    s = g.summary()
    cols = st.columns(5)
    cols[0].metric("Neurons", f"{s['nodes']['neuron']:,}", help="MLP neurons kept (visited ones have their inputs).")
    cols[1].metric("Edges", f"{s['edges']:,}")
    cols[2].metric("Replacement score", f"{g.replacement_score:.3f}",
                   help="Share of the target logits the pruned graph keeps (1: unpruned, exact).")
    cols[3].metric("Visited", f"{s['visited']:,}", help="Nodes whose incoming edges were computed.")
    cols[4].metric("From cache", "yes" if shown.cache_hit else "no")
    st.caption("Targets: " + ", ".join(f"{t!r} (p = {p:.3f})" for t, p in zip(g.target_tokens, g.target_probs,
                                                                               strict=True)))


def pin_choices(g: GraphResult) -> list[int]:
    """The nodes one can pin: neurons and logits, strongest influence first."""
    sel = np.nonzero((g.node_kind == KIND_NEURON) | (g.node_kind == KIND_LOGIT))[0]
    score = np.abs(g.node_influence[sel]) if np.any(g.node_influence) else np.abs(g.node_activation[sel])
    return [int(i) for i in sel[np.argsort(-score, kind="stable")]]


def pinned_nodes(g: GraphResult, clicked: list[int]) -> list[int]:
    """The pinned node numbers (multiselect), with nodes clicked in the figure added."""
    choices = pin_choices(g)
    current = [i for i in st.session_state.get(PINNED_KEY, []) if i in set(choices)]
    for i in clicked:
        if i in set(choices) and i not in current:
            current.append(i)
    st.session_state[PINNED_KEY] = current
    return st.multiselect("Pinned nodes (click a node in the figure, or choose here)", choices, key=PINNED_KEY,
                          format_func=g.node_id)


INTERVENTION_CAPTION = (
    "**Predicted**: the graph's linear circuit along its visited, kept edges. **Frozen**: the detached model's "
    "exact linear response (norm scales, attention weights and gates frozen, every downstream neuron responding). "
    "Theory: the prediction equals the frozen change exactly when every neuron on the paths from the scaled "
    "neurons to the targets was visited and kept (e.g. a single neuron of an unpruned graph that visited every "
    "neuron); a difference is what pruning and the visiting cap left out. **Measured**: the full model, intervened minus clean "
    "forward. It recomputes norm scales, softmax weights and gates, so it differs from the frozen change by the "
    "model's nonlinear effects, even for small scalings (the frozen derivative is not the ordinary one).")


def show_decodings(g: GraphResult, node: int) -> None:
    """A pinned neuron's decodings (what it writes, what it reads), when the graph has them."""
    decodings = decodings_table(g, node)
    if decodings is not None:
        st.markdown("**Decodings** (output through the unembedding, input by cosine with the embeddings)")
        table(decodings, name=f"decodings_{g.node_id(node)}")


def show_intervention(shown: Shown, neurons: list[int]) -> None:
    """Scale or zero the pinned neurons: the graph's prediction beside the frozen and the measured change."""
    g: GraphResult = shown.result
    st.subheader("Intervene on the pinned neurons")
    factor = st.slider("Scale the pinned neurons by", -2.0, 3.0, 0.0, 0.1, key="gr_factor",
                       help="0 zeroes them (ablation), 1 leaves them as they are.")
    delta = g.predict_intervention({i: factor for i in neurons})
    factors = {(int(g.node_layer[i]), int(g.node_position[i]), int(g.node_index[i])): float(factor) for i in neurons}
    computed = run_with_status("intervention", lambda progress: get_service().graph_intervention(
        shown.spec, shown.prompt, factors, g.target_ids, progress=progress))
    logits = np.nonzero(g.node_kind == KIND_LOGIT)[0]
    columns = {"target": [repr(t) for t in g.target_tokens], "baseline logit": g.node_activation[logits],
               "predicted change": delta}
    if computed is not None:
        m = computed.result
        columns.update({"baseline logit": m.baseline, "frozen change": m.frozen, "measured change": m.measured})
    frame = pd.DataFrame(columns)
    table(frame, name="intervention")
    st.caption(INTERVENTION_CAPTION)
    st.download_button("Download the intervention (CSV)", data=csv_text(frame),
                       file_name=f"graph_{file_slug(g.model)}_intervention.csv", mime="text/csv", on_click="ignore",
                       key="gr_intervention_csv")


def show_pinned(shown: Shown, pinned: list[int], slug: str) -> None:
    """Each pinned node's decodings and strongest inputs and outputs, the pinned subgraph, the intervention."""
    g: GraphResult = shown.result
    for i in pinned:
        with st.expander(f"{g.node_id(i)} — activation {g.node_activation[i]:.4g}", expanded=len(pinned) == 1):
            show_decodings(g, i)
            left, right = st.columns(2)
            left.markdown("**Strongest inputs**")
            table(node_edges_table(g, i, "in"), name=f"inputs_{g.node_id(i)}", container=left)
            right.markdown("**Strongest outputs**")
            table(node_edges_table(g, i, "out"), name=f"outputs_{g.node_id(i)}", container=right)
    if len(pinned) > 1:
        st.subheader("Pinned subgraph")
        chart(graph_figure(g, nodes=pinned, pinned=pinned, theme=current_theme()), "gr_subgraph", f"graph_{slug}_pinned")
    neurons = [i for i in pinned if g.node_kind[i] == KIND_NEURON]
    if neurons:
        show_intervention(shown, neurons)


def show_result(shown: Shown) -> None:
    g: GraphResult = shown.result
    slug = file_slug(f"{g.model}_graph")
    st.subheader("Result")
    st.caption(f"`{g.model}` · {plural(len(g.token_ids), 'token')} · "
               f"{'pruned' if g.pruned else 'unpruned'} (node {g.node_threshold}, edge {g.edge_threshold}) · "
               f"prompt: {shown.prompt!r}")
    show_metrics(shown)
    with st.expander("What am I looking at?"):
        st.markdown(EXPLANATION)
    max_edges = st.slider("Edges drawn (strongest first)", 10, 2000, 400, 10, key="gr_max_edges")
    pinned_before = st.session_state.get(PINNED_KEY, [])
    fig = graph_figure(g, max_edges=max_edges, pinned=pinned_before, theme=current_theme())
    event = chart(fig, "gr_figure", f"graph_{slug}", on_select="rerun", selection_mode=("points",))
    clicked = [int(p["customdata"]) for p in (event.selection.points if event else []) if "customdata" in p]
    pinned = pinned_nodes(g, clicked)
    show_pinned(shown, pinned, slug)
    st.download_button("Download the graph (lldd JSON)", data=json.dumps(g.to_json()), file_name=f"graph_{slug}.json",
                       mime="application/json", on_click="ignore", key="gr_json")
    edges = pd.DataFrame(g.edges())
    st.download_button("Download the edges (CSV)", data=csv_text(edges), file_name=f"graph_{slug}_edges.csv",
                       mime="text/csv",
                       on_click="ignore", key="gr_edges_csv")


def main() -> None:
    spec, shape = view_start(
        "Attribution graph",
        "Where the next-token prediction comes from: every MLP neuron a linear node, every value the exact sum "
        "of its inputs.",
    )
    if shape is not None:
        submitted, prompt, settings = request_form()
        if submitted or replaying():
            shown = compute(spec, prompt, settings)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
    result_or_hint(kept(RESULT_KEY, GraphResult), shape is not None, show_result,
                   "Enter a prompt and press **Compute graph**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
