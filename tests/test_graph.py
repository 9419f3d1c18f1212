"""Exact attribution graphs (lldd_core.analysis.graph): completeness, stock values, brute-force edges, pruning, interventions."""

from __future__ import annotations

import contextlib
import dataclasses
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
from lldd_core.analysis.graph_decode import decode_graph_neurons, decoded_neurons, neuron_vectors
from lldd_core.analysis.graph_intervention import measure_intervention, mlp_width
from lldd_core.analysis.graph_prune import prune
from lldd_core.analysis.graph_result import KIND_LOGIT, KIND_NEURON, GraphResult
from lldd_core.errors import InputError
from lldd_core.forward.hooks import capture, hooks, replace_input
from lldd_core.forward.linearize import detached_mode, live_mode
from lldd_core.forward.residual import run_to_layer
from lldd_core.models.arch import adapter_for
from lldd_core.models.loading import ModelSpec
from lldd_core.models.placement import scaled_biases
from lldd_core.store.results import from_bytes, to_bytes
from tests.tiny import BIASED, FAMILIES, MOE, PROMPT

#: A graph node is one neuron of a block's single MLP; MoE blocks route each token to (expert, neuron)
#: pairs, so their graphs are refused (test_mixture_of_experts_graphs_are_refused) and these tests skip them.
GRAPH_FAMILIES = tuple(f for f in FAMILIES if f not in MOE)

SHORT = "The Golden Gate Bridge is"  # the service's unpruned graph visits every neuron of these few tokens
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


@pytest.mark.parametrize("family", GRAPH_FAMILIES)
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
    model, adapter, _, g = _full(tiny_dirs, "llama")
    p = prune(g)
    p = dataclasses.replace(p, **decode_graph_neurons(model, adapter, p, AutoTokenizer.from_pretrained(
        tiny_dirs["llama"]), n=3))
    data = json.loads(json.dumps(p.to_json()))
    decoded = [n for n in data["nodes"] if "decodings" in n]
    assert len(decoded) == int((p.node_kind == KIND_NEURON).sum()) and all(n["kind"] == "neuron" for n in decoded)
    assert set(decoded[0]["decodings"]) == {"out+", "out-", "in+", "in-", "gate+", "gate-"}
    assert all(len(v) == 3 and isinstance(v[0][0], str) for v in decoded[0]["decodings"].values())
    assert [t["path"][-1] for t in data["top_path"]] == [f"L_{t}" for t in p.target_ids]
    by_id = {n["id"]: n for n in data["nodes"]}
    for top in data["top_path"]:  # labels name what each node stands for: token, raised token, target token
        assert top["labels"][-1] == (f"{top['path'][-1]} {top['target']!r}" if p.target_tokens else top["path"][-1])
        for node_id, label in zip(top["path"][1:-1], top["labels"][1:-1], strict=True):
            assert label == f"{node_id} +{by_id[node_id]['decodings']['out+'][0][0]!r}"
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
    assert all("writes" in n["clerp"] for n in npd["nodes"] if n["feature_type"] == "cross layer transcoder")
    back = from_bytes(to_bytes(p))
    back.validate()
    assert back.to_json() == p.to_json()
    with pytest.raises(ValueError):
        dataclasses.replace(p, decoded_tokens=p.decoded_tokens[1:]).validate()


def test_cli_graph_json_neuronpedia_cache_and_errors(tiny_dirs, fresh_service, capsys, tmp_path):
    from lldd_core.cli.main import main

    base = ["graph", "--model", str(tiny_dirs["qwen2"]), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--quiet", "--max-nodes", "200"]
    npd = tmp_path / "np.json"
    assert main([*base, "--json", "-", "--neuronpedia", str(npd), "--decode", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(len(v) == 2 for n in data["nodes"] if n["kind"] == "neuron" for v in n["decodings"].values())
    assert len(data["top_path"]) == 3 and data["tokens"]
    assert not data["cache_hit"] and data["pruned"] and 0 < data["replacement_score"]
    assert {"id", "kind", "layer", "position", "index", "activation"} <= data["nodes"][0].keys()
    assert {"source", "target", "weight"} == data["edges"][0].keys()
    assert {n["kind"] for n in data["nodes"]} >= {"embedding", "bias", "neuron", "logit"}  # qwen2 has biases
    assert json.loads(npd.read_text())["metadata"]["prompt_tokens"]
    assert main([*base, "--json", "-", "--decode", "2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cache_hit"] and again["edges"] == data["edges"]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert text.count("top path   into") == 3 and "replacement score" in text
    assert main([*base, "--target", " Golden", "--no-prune", "--json", "-"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert len(one["targets"]) == 1 and not one["pruned"] and one["replacement_score"] == 1.0
    for bad in (["--target", "Golden Gate Bridge"], ["--node-threshold", "0"], ["--max-nodes", "0"], ["--decode", "0"]):
        assert main([*base, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


@pytest.mark.parametrize("family", MOE)
def test_mixture_of_experts_graphs_are_refused(tiny_dirs, family):
    model, adapter, ids = _load(tiny_dirs, family, tokens=4)
    with pytest.raises(InputError, match="not available for mixture-of-experts models"):
        build_graph(model, adapter, ids)
    with pytest.raises(InputError, match="mixture-of-experts"):
        measure_intervention(model, adapter, ids, {(0, 0, 0): 0.0}, [0])


def test_cli_refuses_a_mixture_of_experts_graph_in_one_line(tiny_dirs, fresh_service, capsys, monkeypatch):
    import lldd_core.service as service_module
    from lldd_core.cli.main import main

    monkeypatch.setattr(service_module, "load_model", None)  # refused before any weight is loaded
    assert main(["graph", "--model", str(tiny_dirs["mixtral"]), "--prompt", PROMPT, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "mixture-of-experts models (Mixtral)" in err[0]


def test_top_path_is_the_best_path_by_exhaustive_search(tiny_dirs):
    """Every source-to-logit path of a small pruned graph, enumerated: the top path carries the largest signed
    share ``prod_e w_e / v_target(e)`` of the logit (a path opposing the logit has a negative share)."""
    import functools

    _, _, _, g = _full(tiny_dirs, "gpt2")
    p = prune(g, 0.5, 0.9)
    into: dict[int, list[tuple[int, float]]] = {}
    for s, t, w in zip(p.edge_source, p.edge_target, p.edge_weight, strict=True):
        into.setdefault(int(t), []).append((int(s), float(w)))

    @functools.cache
    def paths(n: int) -> tuple[tuple[float, tuple[int, ...]], ...]:
        if p.node_kind[n] in (0, 1):  # embeddings and biases start paths
            return ((1.0, (n,)),)
        return tuple((score * w / p.node_activation[n], path + (n,)) for s, w in into.get(n, [])
                     for score, path in paths(s))

    for logit in np.nonzero(p.node_kind == KIND_LOGIT)[0]:
        path, score = p.top_path(int(logit))
        every = paths(int(logit))
        want_score, want_path = max(every, key=lambda o: o[0])
        assert any(sc < 0 for sc, _ in every)  # some paths oppose the logit: the sign matters
        assert score == pytest.approx(want_score, rel=1e-12) and score > 0
        assert tuple(path) == want_path and p.node_kind[path[0]] in (0, 1) and path[-1] == logit


# --- decodings -----------------------------------------------------------------------------------

def _assert_positively_parallel(a: torch.Tensor, b: torch.Tensor) -> None:
    """Each row of ``a`` is a positive multiple of the same row of ``b`` (cosine 1 to rounding)."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert torch.all(cos >= 1 - 1e-12), cos


@pytest.mark.parametrize("family", GRAPH_FAMILIES)
def test_neuron_vectors_are_what_a_neuron_writes_and_reads(tiny_dirs, family):
    """By autograd in the detached model, where the adapters' paths cannot hide a mistake: the MLP term's
    derivative by ``h_i`` is a positive multiple of ``write``; the pre-activation's (``up``, ``gate``)
    derivative by the stream the MLP reads is a positive multiple of ``read`` (``gate``)."""
    model, adapter, ids = _load(tiny_dirs, family, tokens=5)
    n_layers, pos = len(adapter.layers(model)), 3
    layer = n_layers - 1
    block = adapter.layers(model)[layer]
    index = torch.tensor([0, 5, 17, 63])
    vec = neuron_vectors(model, adapter, layer, index)
    stream: dict = {}

    def leaf(x: torch.Tensor) -> torch.Tensor:
        stream["r"] = x.detach().clone().requires_grad_(True)
        return stream["r"]

    reads_at = block.get_submodule(adapter.mlp_norm or adapter.mlp_down.rsplit(".", 1)[0])
    seen: dict = {}
    extra = [capture(block.get_submodule(adapter.mlp_gate), seen, "gate")] if adapter.mlp_gate else []
    cap = _Capture(mlp_down_modules(model, adapter))
    with detached_mode(model, adapter), torch.enable_grad(), cap.active(), hooks(
            replace_input(reads_at, leaf), capture(block.get_submodule(adapter.mlp_up), seen, "up"),
            capture(adapter.sublayer(block, "mlp"), seen, "term"), *extra):
        run_to_layer(model, adapter, ids.reshape(1, -1), n_layers)

    def jac(out: torch.Tensor, wrt: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``d out[0, pos, c] / d wrt[0, pos]`` for each ``c`` in ``cols`` (rows)."""
        cot = torch.zeros(len(cols), *out.shape, dtype=out.dtype)
        cot[torch.arange(len(cols)), 0, pos, cols] = 1.0
        g = torch.autograd.grad(out, wrt, cot, is_grads_batched=True, retain_graph=True)[0]
        return g[:, 0, pos]

    d = seen["term"].shape[-1]
    write = jac(seen["term"], cap.leaves[layer], torch.arange(d))[:, index].T  # column i: d term / d h_i
    _assert_positively_parallel(write, vec["write"])
    m = cap.leaves[layer].shape[-1]
    up_cols = index + m if adapter.mlp_gate_up_fused else index
    _assert_positively_parallel(jac(seen["up"], stream["r"], up_cols), vec["read"])
    assert ("gate" in vec) == adapter.gated_mlp
    if adapter.gated_mlp:
        _assert_positively_parallel(jac(seen["gate"], stream["r"], index), vec["gate"])


def _brute_force_vectors(model, family: str, layer: int, i: int) -> dict[str, torch.Tensor]:
    """Each family's decoding vectors spelled out from its named weights: the logit direction ``W_U F P col``
    and the read (and gate) directions ``Nᵀ row`` in residual coordinates."""
    with torch.no_grad():
        if family == "gpt2":
            blk, lnf = model.transformer.h[layer], model.transformer.ln_f
            col = blk.mlp.c_proj.weight[i]  # Conv1D: [in, out]
            logit = model.lm_head.weight @ ((col - col.mean()) * lnf.weight)
            row = blk.mlp.c_fc.weight[:, i] * blk.ln_2.weight
            return {"logit": logit, "read": row - row.mean()}
        blk, final = model.model.layers[layer], model.model.norm
        if family == "gemma2":
            col = (1 + blk.post_feedforward_layernorm.weight) * blk.mlp.down_proj.weight[:, i]
            g = 1 + blk.pre_feedforward_layernorm.weight
            return {"logit": model.lm_head.weight @ ((1 + final.weight) * col), "read": g * blk.mlp.up_proj.weight[i],
                    "gate": g * blk.mlp.gate_proj.weight[i]}
        g = blk.post_attention_layernorm.weight
        out = {"logit": model.lm_head.weight @ (final.weight * blk.mlp.down_proj.weight[:, i])}
        if family == "phi3":  # fused: gate rows, then up rows
            W, m = blk.mlp.gate_up_proj.weight, blk.mlp.down_proj.weight.shape[1]
            return {**out, "read": g * W[m + i], "gate": g * W[i]}
        return {**out, "read": g * blk.mlp.up_proj.weight[i], "gate": g * blk.mlp.gate_proj.weight[i]}


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "phi3"])
def test_decodings_equal_a_brute_force_from_the_weights(tiny_dirs, family):
    """Every decoded neuron of a pruned graph: top tokens and scores of all four (six) decodings equal
    a full sort of the vocabulary scored from the weights (gpt2: tied embeddings and LayerNorms)."""
    model, adapter, ids, g = _full(tiny_dirs, family)
    tok = AutoTokenizer.from_pretrained(tiny_dirs[family])
    p = prune(g)
    p = dataclasses.replace(p, **decode_graph_neurons(model, adapter, p, tok, n=4))
    p.validate()
    nodes = decoded_neurons(p)
    assert nodes.size and set(map(tuple, np.stack([p.node_layer[nodes], p.node_index[nodes]], 1).tolist())) == set(
        zip(p.decoded_layer.tolist(), p.decoded_index.tolist(), strict=True))  # each (layer, neuron) once
    W_E = model.get_input_embeddings().weight.detach()
    unit_E = torch.nan_to_num(W_E / W_E.norm(dim=-1, keepdim=True))  # a zero (padding) row: cosine 0
    for node in nodes[:: max(1, nodes.size // 12)]:
        vec = _brute_force_vectors(model, family, int(p.node_layer[node]), int(p.node_index[node]))
        scores = {"out": vec["logit"], "in": unit_E @ (vec["read"] / vec["read"].norm())}
        if "gate" in vec:
            scores["gate"] = unit_E @ (vec["gate"] / vec["gate"].norm())
        dec = p.decoding(int(node))
        assert set(dec) == {f"{k}{s}" for k in scores for s in "+-"}
        for name, full in scores.items():
            for sign, values in (("+", full), ("-", -full)):
                order = torch.argsort(values, descending=True)[:4]
                got = dec[f"{name}{sign}"]
                assert [t for t, _ in got] == [tok.decode([int(j)]) for j in order]
                np.testing.assert_allclose([s for _, s in got], values[order].numpy(), rtol=1e-12, atol=1e-12)


# --- interventions through the service ------------------------------------------------------------

def _live_derivative(model, adapter, ids, spec: dict, targets) -> np.ndarray:
    """``d logit / dt`` at ``t = 0`` in the live (ordinary) model for the scale ``1 + t (alpha - 1)``."""
    n_layers = len(adapter.layers(model))
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    u = torch.zeros(n_layers, 1, len(ids), mlp_width(mlp_down_modules(model, adapter)[0]), dtype=torch.float64)
    for (lay, pos, idx), a in spec.items():
        u[lay, 0, pos, idx] = a - 1.0
    cap = _Capture(mlp_down_modules(model, adapter), scale=[1 + t * u[i] for i in range(n_layers)], inject=False)
    with live_mode(model, adapter), torch.enable_grad(), cap.active():
        logits = raw_logits(model, adapter, run_to_layer(model, adapter, ids.reshape(1, -1), n_layers).xk)
        return np.array([float(torch.autograd.grad(logits[j], t, retain_graph=True)[0]) for j in targets])


def test_service_intervention_frozen_equals_the_graph_and_measured_is_the_full_model(tiny_dirs, fresh_service):
    from lldd_core.service import get_service

    svc, spec = get_service(), ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    g = svc.graph(spec, SHORT, node_threshold=None, max_nodes=None).result
    assert g.decoded_layer.size == int((g.node_kind == KIND_NEURON).sum()) // len(g.token_ids)  # all visited
    neurons = np.nonzero(g.node_kind == KIND_NEURON)[0]
    first = neurons[g.node_layer[neurons] == 0]
    chosen = first[np.argsort(-np.abs(g.node_activation[first]))[:2]]
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float64).eval()
    adapter, ids = adapter_for("llama"), torch.tensor(g.token_ids)
    for factors in ({int(chosen[0]): 0.0}, {int(chosen[0]): 0.0, int(chosen[1]): 2.0}):
        key = {(int(g.node_layer[n]), int(g.node_position[n]), int(g.node_index[n])): a for n, a in factors.items()}
        computed = svc.graph_intervention(spec, SHORT, key, g.target_ids)
        r = computed.result
        assert not computed.cache_hit and svc.graph_intervention(spec, SHORT, key, g.target_ids).cache_hit
        predicted = g.predict_intervention(factors)
        # theory: in the frozen model the graph's prediction is exact (unpruned, every neuron visited)
        np.testing.assert_allclose(predicted, r.frozen, rtol=1e-10, atol=1e-10 * np.abs(r.frozen).max())
        np.testing.assert_allclose(r.measured, measure_intervention(model, adapter, ids, key, g.target_ids),
                                   rtol=1e-12, atol=1e-12)
        # the clean live logits are the graph's (the live forward rounds at ~1e-7 in places, as the stock one does)
        np.testing.assert_allclose(r.baseline, g.node_activation[g.node_kind == KIND_LOGIT], rtol=1e-6, atol=1e-6)
    # the full model: for small scalings the measured change is the ordinary derivative's step (second order
    # off), not the frozen one — the gap is the model's nonlinearity (norm scales, softmax, gates recomputed)
    key = {k: 1.001 for k in key}
    r = svc.graph_intervention(spec, SHORT, key, g.target_ids).result
    live = _live_derivative(model, adapter, ids, key, g.target_ids)  # the step t = 1 to first order
    np.testing.assert_allclose(r.measured, live, rtol=1e-2, atol=1e-2 * np.abs(live).max())
    np.testing.assert_allclose(r.frozen, g.predict_intervention({int(n): 1.001 for n in chosen}), rtol=1e-9, atol=1e-14)
    for bad in ({(9, 0, 0): 0.0}, {(0, 99, 0): 0.0}, {(0, 0, 0): float("nan")}, {}):
        with pytest.raises(InputError):
            svc.graph_intervention(spec, SHORT, bad, g.target_ids)
    with pytest.raises(InputError):
        svc.graph_intervention(spec, SHORT, {(0, 0, 10**6): 0.0}, g.target_ids)
    with pytest.raises(InputError):
        svc.graph_intervention(spec, SHORT, {(0, 0, 0): 0.0}, [10**9])
