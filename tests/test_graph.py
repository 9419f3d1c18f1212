"""Exact attribution graphs (lldd_core.analysis.graph): completeness, stock values, brute-force edges, pruning, interventions."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lldd_core.analysis.graph import (
    _bias_groups,
    _Capture,
    build_graph,
    mlp_down_modules,
    raw_logits,
)
from lldd_core.analysis.graph_intervention import measure_intervention
from lldd_core.analysis.graph_prune import prune
from lldd_core.analysis.graph_result import KIND_LOGIT, KIND_NEURON, GraphResult
from lldd_core.forward.linearize import detached_mode
from lldd_core.forward.residual import run_to_layer
from lldd_core.models.arch import adapter_for
from lldd_core.models.placement import scaled_biases
from lldd_core.store.results import from_bytes, to_bytes
from tests.tiny import BIASED, FAMILIES, PROMPT

TOKENS = 8  # short prompts keep every family's full graph (all neurons visited) to about a second


def _load(tiny_dirs, family: str, tokens: int = TOKENS):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], dtype=torch.float64).eval()
    ids = torch.tensor(AutoTokenizer.from_pretrained(tiny_dirs[family])(PROMPT)["input_ids"][:tokens])
    return model, adapter_for(model.config.model_type), ids


_GRAPHS: dict[str, tuple] = {}


def _full(tiny_dirs, family: str):
    """(model, adapter, ids, unpruned graph with every neuron visited), once per family."""
    if family not in _GRAPHS:
        model, adapter, ids = _load(tiny_dirs, family)
        _GRAPHS[family] = (model, adapter, ids, build_graph(model, adapter, ids, max_nodes=None, batch_size=512))
    return _GRAPHS[family]


def _stock_hidden_and_logits(model, adapter, ids):
    """The stock model's MLP hidden vectors (inputs of the output projections) and last-position logits."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
               for m in mlp_down_modules(model, adapter)]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids.reshape(1, -1)).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return torch.stack([h[0] for h in seen]), logits


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_is_exact_and_matches_the_stock_model(tiny_dirs, family):
    model, adapter, ids, g = _full(tiny_dirs, family)
    neuron, logit = g.node_kind == KIND_NEURON, g.node_kind == KIND_LOGIT
    assert g.node_visited[neuron].all() and g.node_visited[logit].all()
    inc = g.incoming_sums()
    for kind in (neuron, logit):  # completeness: every value is the sum of its incoming edges
        err = np.max(np.abs(inc[kind] - g.node_activation[kind])) / np.max(np.abs(g.node_activation[kind]))
        assert err <= 1e-10, (family, err)
    assert (g.node_kind == 1).any() == (family in BIASED)  # bias nodes exactly where the family has biases
    hidden, logits = _stock_hidden_and_logits(model, adapter, ids)
    # stock transformers rounds RMSNorm and softmax to float32 inside a float64 model: compare at 1e-6
    ours = torch.from_numpy(g.node_activation[neuron]).reshape(hidden.shape)
    assert torch.allclose(ours, hidden, rtol=1e-6, atol=1e-6 * hidden.abs().max())
    raw = torch.from_numpy(g.node_activation[logit])
    cap = getattr(model.config, "final_logit_softcapping", None)
    expected = logits[g.target_ids]
    assert torch.allclose(torch.tanh(raw / cap) * cap if cap else raw, expected, rtol=1e-6, atol=1e-6)
    assert g.target_ids == torch.topk(logits, 3).indices.tolist()  # default targets: the top 3


def _brute_force_rows(model, adapter, ids, targets) -> np.ndarray:
    """Every target's incoming edges from one full Jacobian of (logits, neurons) w.r.t. all leaves."""
    n_layers = len(adapter.layers(model))
    groups = _bias_groups(model, adapter)
    downs = mlp_down_modules(model, adapter)
    clean = _Capture(downs, inject=False)
    with detached_mode(model, adapter), torch.no_grad(), clean.active():
        x0 = run_to_layer(model, adapter, ids.reshape(1, -1), n_layers).x0
    hs = [h.detach() for h in clean.live]

    def f(x0_, *rest):
        scales, given = rest[: len(groups)], rest[len(groups):]
        cap = _Capture(downs, given=given)
        with contextlib.ExitStack() as stack:
            stack.enter_context(detached_mode(model, adapter))
            for (_, modules), s in zip(groups, scales, strict=True):
                stack.enter_context(scaled_biases(modules, s))
            stack.enter_context(cap.active())
            logits = raw_logits(model, adapter, run_to_layer(model, adapter, ids.reshape(1, -1), n_layers, x0=x0_).xk)
        return torch.cat([logits[targets], *(h.reshape(-1) for h in cap.live)])

    ones = [torch.ones((), dtype=torch.float64) for _ in groups]
    J = torch.autograd.functional.jacobian(f, (x0, *ones, *hs))  # one backward per output (vectorize=False)
    emb = (J[0][:, 0] * x0[0]).sum(-1)
    bias = [j.reshape(-1, 1) for j in J[1: 1 + len(groups)]]
    neur = [(j * h).reshape(j.shape[0], -1) for j, h in zip(J[1 + len(groups):], hs, strict=True)]
    rows = torch.cat([emb, *bias, *neur], 1).numpy()
    return np.concatenate([rows[len(targets):], rows[: len(targets)]])  # neurons then logits, like node numbers


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_edges_equal_a_brute_force_jacobian(tiny_dirs, family):
    model, adapter, ids = _load(tiny_dirs, family, tokens=5)
    g = build_graph(model, adapter, ids, max_nodes=None, batch_size=100)
    brute = _brute_force_rows(model, adapter, ids, g.target_ids)
    n_src = int((g.node_kind != KIND_LOGIT).sum())
    first_neuron = int(np.argmax(g.node_kind == KIND_NEURON))
    dense = np.zeros((len(g.node_kind) - first_neuron, n_src))
    np.add.at(dense, (g.edge_target - first_neuron, g.edge_source), g.edge_weight)
    assert np.max(np.abs(dense - brute)) <= 1e-10 * np.max(np.abs(brute))
    assert (brute != 0).any(1).all()  # every target row compared has real (nonzero) edges


def _evaluate_kept_logits(g: GraphResult) -> np.ndarray:
    """Independent re-evaluation of a pruned graph as a linear circuit (graph_prune's definition), node by node."""
    into: dict[int, list[tuple[int, float]]] = {}
    for s, t, w in zip(g.edge_source, g.edge_target, g.edge_weight, strict=True):
        into.setdefault(int(t), []).append((int(s), float(w)))
    ratio: dict[int, float] = {}

    def r(n: int) -> float:
        if n not in ratio:
            if g.node_kind[n] != KIND_NEURON or not g.node_visited[n]:
                ratio[n] = 1.0
            else:
                v = sum(w * r(s) for s, w in into.get(n, []))
                ratio[n] = v / g.node_activation[n] if g.node_activation[n] != 0 else 0.0
        return ratio[n]

    logits = np.nonzero(g.node_kind == KIND_LOGIT)[0]
    return np.array([sum(w * r(s) for s, w in into.get(int(n), [])) for n in logits])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruning_keeps_the_stated_share(tiny_dirs, family):
    _, _, _, g = _full(tiny_dirs, family)
    p = prune(g, 0.8, 0.98)
    assert p.pruned and len(p.node_kind) < len(g.node_kind) / 4
    assert p.node_influence_kept >= 0.8 and p.edge_score_kept >= 0.98
    kept = _evaluate_kept_logits(p)
    np.testing.assert_allclose(p.kept_logits, kept, rtol=1e-9, atol=1e-9)
    probs = np.asarray(p.target_probs)
    full = g.node_activation[g.node_kind == KIND_LOGIT]
    assert p.replacement_score == pytest.approx(probs @ kept / (probs @ full), rel=1e-9)
    # every kept edge is an original edge with its original weight
    ids = {(g.node_id(s), g.node_id(t)): w for s, t, w in zip(g.edge_source, g.edge_target, g.edge_weight, strict=True)}
    for e in p.edges()[:500]:
        assert ids[(e["source"], e["target"])] == e["weight"]
    everything = prune(g, 1.0, 1.0)  # keeping all influence keeps the whole logit
    assert everything.replacement_score == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_interventions_predicted_by_the_graph(tiny_dirs, family):
    model, adapter, ids, g = _full(tiny_dirs, family)
    neurons = np.nonzero(g.node_kind == KIND_NEURON)[0]
    # the two largest layer-0 neurons (their effect runs through layer-1 neurons too) and one last-layer neuron
    first = neurons[g.node_layer[neurons] == 0]
    last = neurons[g.node_layer[neurons] == g.n_layers - 1]
    chosen = [*first[np.argsort(-np.abs(g.node_activation[first]))[:2]], last[np.argmax(np.abs(g.node_activation[last]))]]
    factors = dict(zip((int(n) for n in chosen), (0.0, 2.0, 0.5), strict=True))
    predicted = g.predict_intervention(factors)
    spec = {(int(g.node_layer[n]), int(g.node_position[n]), int(g.node_index[n])): a for n, a in factors.items()}
    linear = measure_intervention(model, adapter, ids, spec, g.target_ids, linear=True)
    # exact: the graph's prediction is the detached (frozen) map's response, downstream neurons included
    np.testing.assert_allclose(predicted, linear, rtol=1e-10, atol=1e-10 * np.abs(linear).max())
    assert np.abs(linear).max() > 0
    # the full model recomputes norm scales, attention and gates, so its change is not the graph's (not even
    # to first order: the detached derivative is not the ordinary one). What holds exactly: the measurement
    # equals an independent stock forward with the neurons scaled by a hook, and a last-layer neuron away
    # from the last position changes the last logits by exactly 0 in the graph and in the full model.
    measured = measure_intervention(model, adapter, ids, spec, g.target_ids)
    stock = []
    for values in ({}, spec):
        def scale(module, args, layer, values=values):
            h = args[0].clone()
            for (lay, pos, idx), a in values.items():
                if lay == layer:
                    h[0, pos, idx] *= a
            return (h,)

        downs = mlp_down_modules(model, adapter)
        handles = [m.register_forward_pre_hook(lambda mod, args, i=i: scale(mod, args, i)) for i, m in enumerate(downs)]
        try:
            with torch.no_grad():
                stock.append(model(input_ids=ids.reshape(1, -1)).logits[0, -1, g.target_ids].numpy())
        finally:
            for h in handles:
                h.remove()
    # (stock transformers rounds norms and softmax to float32: agreement to float32 precision of the logits)
    np.testing.assert_allclose(measured, stock[1] - stock[0], rtol=0, atol=1e-6 * max(1.0, np.abs(stock[0]).max()))
    assert np.abs(measured).max() > 0
    away = last[g.node_position[last] < len(ids) - 1][0]
    key = (int(g.node_layer[away]), int(g.node_position[away]), int(g.node_index[away]))
    assert not g.predict_intervention({int(away): 0.0}).any()
    assert not measure_intervention(model, adapter, ids, {key: 0.0}, g.target_ids).any()


def test_exports_and_cache_round_trip(tiny_dirs):
    _, _, _, g = _full(tiny_dirs, "llama")
    p = prune(g)
    data = json.loads(json.dumps(p.to_json()))
    assert {n["kind"] for n in data["nodes"]} == {"embedding", "neuron", "logit"}
    node_ids = {n["id"] for n in data["nodes"]}
    assert len(node_ids) == len(data["nodes"]) and all(e["source"] in node_ids and e["target"] in node_ids
                                                       for e in data["edges"])
    assert data["replacement_score"] == p.replacement_score
    npd = json.loads(json.dumps(p.to_neuronpedia()))
    assert set(npd) == {"metadata", "qParams", "nodes", "links"}
    np_ids = [n["node_id"] for n in npd["nodes"]]
    assert len(set(np_ids)) == len(np_ids) and {n["feature_type"] for n in npd["nodes"]} == {
        "embedding", "cross layer transcoder", "logit"}
    assert all(link["source"] in set(np_ids) and link["target"] in set(np_ids) for link in npd["links"])
    assert sum(n["is_target_logit"] for n in npd["nodes"]) == 3
    back = from_bytes(to_bytes(p))
    assert back.to_json() == p.to_json()


def test_cli_graph_json_neuronpedia_cache_and_errors(tiny_dirs, fresh_service, capsys, tmp_path):
    from lldd_core.cli.main import main

    base = ["graph", "--model", str(tiny_dirs["qwen2"]), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--quiet", "--max-nodes", "200"]
    npd = tmp_path / "np.json"
    assert main([*base, "--json", "-", "--neuronpedia", str(npd)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not data["cache_hit"] and data["pruned"] and 0 < data["replacement_score"]
    assert {"id", "kind", "layer", "position", "index", "activation"} <= data["nodes"][0].keys()
    assert {"source", "target", "weight"} == data["edges"][0].keys()
    assert {n["kind"] for n in data["nodes"]} >= {"embedding", "bias", "neuron", "logit"}  # qwen2 has biases
    assert json.loads(npd.read_text())["metadata"]["prompt_tokens"]
    assert main([*base, "--json", "-"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cache_hit"] and again["edges"] == data["edges"]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert text.count("top path   into") == 3 and "replacement score" in text
    assert main([*base, "--target", " Golden", "--no-prune", "--json", "-"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert len(one["targets"]) == 1 and not one["pruned"] and one["replacement_score"] == 1.0
    for bad in (["--target", "Golden Gate Bridge"], ["--node-threshold", "0"], ["--max-nodes", "0"]):
        assert main([*base, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_top_path_is_the_best_path_by_exhaustive_search(tiny_dirs):
    _, _, _, g = _full(tiny_dirs, "gpt2")
    p = prune(g, 0.5, 0.9)
    into: dict[int, list[tuple[int, float]]] = {}
    for s, t, w in zip(p.edge_source, p.edge_target, p.edge_weight, strict=True):
        into.setdefault(int(t), []).append((int(s), abs(float(w))))

    def best(n: int) -> tuple[float, list[int]]:  # every path, recursively (the pruned graph is small)
        edges = into.get(n, [])
        if not edges:
            return (1.0 if p.node_kind[n] in (0, 1) else 0.0), [n]
        total = sum(w for _, w in edges)
        options = [(score * w / total, path + [n]) for s, w in edges for score, path in [best(s)]]
        return max(options, key=lambda o: o[0])

    for logit in np.nonzero(p.node_kind == KIND_LOGIT)[0]:
        path, score = p.top_path(int(logit))
        want_score, want_path = best(int(logit))
        assert score == pytest.approx(want_score, rel=1e-12) and score > 0
        assert path == want_path and p.node_kind[path[0]] in (0, 1) and path[-1] == logit
