"""Attribution-graph figures and tables (lldd_core.plots.graph) on a tiny model's pruned graph."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lldd_core.analysis.graph import build_graph
from lldd_core.analysis.graph_decode import decode_graph_neurons
from lldd_core.analysis.graph_prune import prune
from lldd_core.analysis.graph_result import KIND_BIAS, KIND_EMBEDDING, KIND_LOGIT, KIND_NEURON, GraphResult
from lldd_core.models.arch import adapter_for
from lldd_core.plots import graph as pg
from lldd_core.plots.common import plotly_text
from tests.tiny import PROMPT


@pytest.fixture(scope="module")
def graph(tiny_dirs) -> GraphResult:
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"], dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    ids = torch.tensor(tok(PROMPT)["input_ids"][:6])
    adapter = adapter_for(model.config.model_type)
    g = prune(build_graph(model, adapter, ids, max_nodes=64, batch_size=64))
    g = dataclasses.replace(g, **decode_graph_neurons(model, adapter, g, tok, n=3))
    g.tokens = tok.convert_ids_to_tokens(ids.tolist())
    return g


def test_layout_puts_nodes_at_their_position_and_layer(graph: GraphResult) -> None:
    x, y = pg.node_xy(graph)
    kind = graph.node_kind
    T, L = len(graph.token_ids), graph.n_layers
    assert np.all(y[kind == KIND_EMBEDDING] == -1) and np.all(x[kind == KIND_EMBEDDING] == graph.node_position[kind == 0])
    assert np.all(x[kind == KIND_BIAS] == -1)
    assert np.all(y[kind == KIND_LOGIT] == L) and np.all(np.abs(x[kind == KIND_LOGIT] - (T - 1)) <= 0.4 + 1e-9)
    neurons = kind == KIND_NEURON
    assert np.all(y[neurons] == graph.node_layer[neurons])
    assert np.all(np.abs(x[neurons] - graph.node_position[neurons]) <= 0.4 + 1e-12)
    # no two neurons drawn on one point (each can be hovered)
    assert len({(a, b) for a, b in zip(x[neurons], y[neurons], strict=True)}) == int(neurons.sum())


def test_figure_draws_the_strongest_edges_by_sign_and_every_node(graph: GraphResult) -> None:
    fig = pg.graph_figure(graph, max_edges=25, decodings={0: "decoded: 'the'"}, pinned=[0])
    json.loads(fig.to_json())
    lines = [t for t in fig.data if t.mode == "lines" and not t.showlegend]  # the legend's samples draw nothing
    markers = [t for t in fig.data if t.mode == "markers"]
    drawn = sum(int(np.isnan(np.asarray(t.x, dtype=float)).sum()) for t in lines)  # one NaN ends each segment
    assert drawn == min(25, graph.edge_weight.size)
    top = pg.strongest_edges(graph, 25)
    assert np.all(np.abs(graph.edge_weight[top]).min() >= np.sort(np.abs(graph.edge_weight))[::-1][24] - 1e-15)
    n_pos = int((graph.edge_weight[top] > 0).sum())
    pos_drawn = sum(int(np.isnan(np.asarray(t.x, dtype=float)).sum()) for t in lines if t.name == "positive edge")
    assert pos_drawn == n_pos
    assert sum(len(t.x) for t in markers) == len(graph.node_kind)
    numbers = np.concatenate([np.asarray(t.customdata) for t in markers])
    assert sorted(numbers.tolist()) == list(range(len(graph.node_kind)))
    first = next(t for t in markers if 0 in list(t.customdata))
    k = list(first.customdata).index(0)
    assert "decoded: 'the'" in first.text[k] and first.marker.line.width[k] == 3  # hover line and pin ring
    assert fig.layout.yaxis.ticktext[0] == "x_0 (embeddings)" and fig.layout.yaxis.ticktext[-1] == "logits"


def test_subgraph_figure_keeps_only_the_chosen_nodes(graph: GraphResult) -> None:
    logit = int(np.nonzero(graph.node_kind == KIND_LOGIT)[0][0])
    path, _ = graph.top_path(logit)
    fig = pg.graph_figure(graph, nodes=path)
    markers = [t for t in fig.data if t.mode == "markers"]
    assert sorted(int(i) for t in markers for i in t.customdata) == sorted(path)
    segments = sum(int(np.isnan(np.asarray(t.x, dtype=float)).sum()) for t in fig.data
                   if t.mode == "lines" and not t.showlegend)
    inside = np.isin(graph.edge_source, path) & np.isin(graph.edge_target, path)
    assert segments == int(inside.sum()) >= len(path) - 1  # the path's own edges at least


def test_edge_tables_are_each_nodes_strongest_inputs_and_outputs(graph: GraphResult) -> None:
    logit = int(np.nonzero(graph.node_kind == KIND_LOGIT)[0][0])
    inputs = pg.node_edges_table(graph, logit, "in", limit=5)
    incoming = graph.edge_weight[graph.edge_target == logit]
    assert len(inputs) == min(5, incoming.size)
    assert np.allclose(np.abs(inputs["weight"]), np.sort(np.abs(incoming))[::-1][:5])
    assert inputs["share"].iloc[0] == pytest.approx(np.abs(incoming).max() / np.abs(incoming).sum())
    source = int(inputs["number"].iloc[0])
    outputs = pg.node_edges_table(graph, source, "out", limit=50)
    assert logit in outputs["number"].tolist()
    with pytest.raises(ValueError):
        pg.node_edges_table(graph, logit, "sideways")


def test_neuron_hover_and_table_show_the_decodings(graph: GraphResult) -> None:
    """Without explicit ``decodings`` every decoded neuron's hover lists its decodings, tokens escaped for plotly."""
    labels = pg.node_labels(graph)
    neuron = int(np.nonzero(graph.node_kind == KIND_NEURON)[0][0])
    dec = graph.decoding(neuron)
    assert dec is not None and set(dec) == {"out+", "out-", "in+", "in-"}  # gpt2: a plain MLP, no gate
    for kind, tokens in dec.items():
        line = next(ln for ln in labels[neuron].split("<br>") if ln.startswith(pg.DECODING_LABELS[kind]))
        assert all(plotly_text(repr(t)) in line for t, _ in tokens)
    logit = int(np.nonzero(graph.node_kind == KIND_LOGIT)[0][0])
    assert graph.decoding(logit) is None and "raises" not in labels[logit]
    table = pg.decodings_table(graph, neuron)
    assert table["decoding"].tolist() == [pg.DECODING_LABELS[k] for k in dec]
    assert table["tokens"].iloc[0] == " ".join(repr(t) for t, _ in dec["out+"])
    assert pg.decodings_table(graph, logit) is None


def test_the_legend_shows_visible_edge_samples_and_nodes_at_one_size(graph: GraphResult) -> None:
    """The drawn edges are thin and faint (alpha by weight, the thinnest band first): the legend's entries are
    samples of their own, opaque and wide, one per sign, and a click on one toggles every edge of its sign."""
    from lldd_core.plots.common import REPORT

    for theme in (pg.DASHBOARD, REPORT):
        fig = pg.graph_figure(graph, max_edges=50, theme=theme)
        samples = [t for t in fig.data if t.mode == "lines" and t.showlegend]
        assert [t.name for t in samples] == ["positive edge", "negative edge"]
        for t, role in zip(samples, ("positive", "negative"), strict=True):
            assert t.line.color == theme.color(role) and t.line.width == pg.LEGEND_EDGE_WIDTH >= 3
            edges = [e for e in fig.data if e.mode == "lines" and e.legendgroup == t.legendgroup and e is not t]
            assert edges and all(not e.showlegend for e in edges)
        assert fig.layout.legend.itemsizing == "constant"
