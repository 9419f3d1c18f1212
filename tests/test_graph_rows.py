"""Graph rows (lldd_core.analysis.graph_rows) and their assembly: the per-block batched path against one backward
per target, exact zeros above a neuron's block, and top-k edges with the rest summed (lldd_core.analysis.graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lldd_core.analysis.graph import assemble, graph_rows
from lldd_core.analysis.graph_prune import prune
from lldd_core.analysis.graph_result import KIND_BIAS, KIND_EMBEDDING, KIND_LOGIT
from lldd_core.analysis.graph_rows import write_rows, write_rows_one_by_one, write_rows_whole_graph
from lldd_core.models.arch import adapter_for
from tests.test_graph import _evaluate_kept_logits
from tests.tiny import PROMPT

_ROWS: dict[str, tuple] = {}


def _rows(tiny_dirs, family: str):
    """(model, adapter, ids, rows of 3 logits + 40 neurons), once per family (float64, 6 tokens)."""
    if family not in _ROWS:
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], dtype=torch.float64).eval()
        ids = torch.tensor(AutoTokenizer.from_pretrained(tiny_dirs[family])(PROMPT)["input_ids"][:6])
        adapter = adapter_for(model.config.model_type)
        _ROWS[family] = (model, adapter, ids, graph_rows(model, adapter, ids, max_nodes=40, batch_size=16))
    return _ROWS[family]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_batched_rows_equal_one_backward_per_target(tiny_dirs, family):
    model, adapter, ids, rows = _rows(tiny_dirs, family)
    fw = rows.fw
    per_block = fw.n_tokens * fw.d_mlp
    # a batch with logits and neurons of every block at several positions, sorted (logits first)
    gen = torch.Generator().manual_seed(0)
    neurons = sorted(set(torch.randint(0, fw.n_layers * per_block, (24,), generator=gen).tolist()))
    batch = [-1, -2, -3, *neurons]
    assert {n // per_block for n in neurons} == set(range(fw.n_layers))
    fast = torch.empty(len(batch), fw.n_sources, dtype=torch.float64)
    slow = torch.empty_like(fast)
    write_rows(fw, batch, fast)
    write_rows_one_by_one(fw, batch, slow)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12 * float(slow.abs().max()))
    whole = torch.empty_like(fast)
    write_rows_whole_graph(fw, batch, whole)
    assert torch.allclose(whole, slow, rtol=1e-12, atol=1e-12 * float(slow.abs().max()))
    neuron_cols = fast[3:, fw.neuron0:].reshape(len(neurons), fw.n_layers, fw.n_tokens, fw.d_mlp)
    for k, n in enumerate(neurons):
        block, position = n // per_block, (n % per_block) // fw.d_mlp
        assert not neuron_cols[k, block:].any()  # a neuron reads only the blocks below it
        assert not neuron_cols[k, :, position + 1:].any()  # and, causally, only its own and earlier positions
        if block > 0:
            assert neuron_cols[k, :block, : position + 1].any()
    # each row sums to its target's value: completeness of the rows themselves
    values = torch.cat([fw.logits.detach()[fw.targets], fw.values().reshape(-1)[neurons]])
    assert torch.allclose(fast.sum(1), values, rtol=0, atol=1e-10 * float(values.abs().max()))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_top_edges_per_row_are_exact_and_the_rest_closes_the_sums(tiny_dirs, family):
    *_, rows = _rows(tiny_dirs, family)
    full = assemble(rows)
    k = 7
    top = assemble(rows, edges_per_row=k)
    top.validate()
    assert full.node_rest.size == 0 and top.node_rest.shape == top.node_kind.shape
    n = len(full.node_kind)
    full_w = dict(zip((full.edge_target * n + full.edge_source).tolist(), full.edge_weight.tolist(), strict=True))
    keys = (top.edge_target * n + top.edge_source).tolist()
    assert all(full_w[key] == w for key, w in zip(keys, top.edge_weight.tolist(), strict=True))  # kept edges exact
    assert np.bincount(top.edge_target, minlength=n).max() <= k
    long_rows = [t for t in np.nonzero(full.node_visited)[0] if (full.edge_target == t).sum() > k]
    assert len(long_rows) >= 10
    for t in long_rows[:10]:  # the kept ones are the row's k largest |w|
        mine = np.abs(full.edge_weight[full.edge_target == t])
        kept = np.abs(top.edge_weight[top.edge_target == t])
        assert kept.size == k and kept.min() >= np.sort(mine)[-k]
    visited = top.node_visited & (top.node_kind != KIND_EMBEDDING) & (top.node_kind != KIND_BIAS)
    closed = top.incoming_sums() + top.node_rest
    scale = np.abs(top.node_activation[visited]).max()
    assert np.abs(closed - top.node_activation)[visited].max() <= 1e-10 * scale  # completeness still checks
    assert np.abs(top.node_rest[visited]).max() > 1e-6 * scale  # and something was really left out
    # the unpruned top-k graph's score is its kept edges re-evaluated as a circuit (test_graph's independent walk)
    logit = top.node_kind == KIND_LOGIT
    probs = np.asarray(top.target_probs)
    kept = _evaluate_kept_logits(top)
    assert top.replacement_score == pytest.approx(probs @ kept / (probs @ top.node_activation[logit]), rel=1e-9)
    assert top.replacement_score != 1.0 and full.replacement_score == 1.0
    p = prune(top, 0.8, 0.98)
    p.validate()
    assert p.node_rest.shape == p.node_kind.shape and (p.node_kind == KIND_LOGIT).sum() == logit.sum()
