"""Blockwise last-token calls (each block alone from its known state) and the gain analysis built on them."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lldd_core.analysis.gains import prompt_gains, prompt_gains_reference
from lldd_core.forward.blockwise import batch_blocks, prompt_blocks
from lldd_core.forward.counting import counted_blocks
from lldd_core.forward.depth import last_token_actions, last_token_states, prompt_context
from lldd_core.forward.jvp import columns, kept_operator
from lldd_core.models.arch import adapter_for
from tests.helpers import load
from tests.tiny import PROMPT

# sliding windows shorter than the prompt (mistral), per-layer masks and rotary tables (gemma3_text),
# a parallel residual (gpt_neox), biases and learned positions (gpt2)
FAMILIES = ["gpt2", "llama", "mistral", "gemma3_text", "gpt_neox"]


def _directions(L: int, d: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(L + 1, d, generator=gen, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_blockwise_gains_equal_todays_path_in_float64(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = handle.info.encode(PROMPT)
    V = _directions(handle.n_layers, handle.info.d_model)
    ctx = prompt_context(handle.model, handle.adapter, ids)
    blocks = prompt_blocks(handle.model, handle.adapter, ids)
    prefix = [(layer.keys.clone(), layer.values.clone()) for layer in ctx.cache.layers]
    for order in (3, 7):
        old = prompt_gains_reference(ctx, V, order=order, eps=0.1)
        new = prompt_gains(blocks, V, order=order, eps=0.1)
        for key in ("predicted", "measured", "exact"):
            torch.testing.assert_close(getattr(new, key), getattr(old, key), rtol=0, atol=1e-10)
        for a, b in zip(new.bases, old.bases):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    with blocks.live():
        torch.testing.assert_close(blocks.states(), ctx.states, rtol=0, atol=1e-12)
    # a PromptContext is accepted as well (its prefix cache reused, not rerun), and nothing wrote into it
    torch.testing.assert_close(prompt_gains(ctx, V, order=7).predicted, old.predicted, rtol=0, atol=1e-10)
    for layer, (k, v) in zip(ctx.cache.layers, prefix):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_one_token_prompt_has_no_cache_and_the_same_gains(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    ids = handle.info.encode(PROMPT)[:1]
    V = _directions(handle.n_layers, handle.info.d_model)
    new = prompt_gains(prompt_blocks(handle.model, handle.adapter, ids), V, order=3)
    old = prompt_gains_reference(prompt_context(handle.model, handle.adapter, ids), V, order=3)
    for key in ("predicted", "measured", "exact"):
        torch.testing.assert_close(getattr(new, key), getattr(old, key), rtol=0, atol=1e-10)


def test_kept_operator_products_equal_forward_mode_columns():
    torch.manual_seed(0)
    W = torch.randn(5, 5, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W @ x) * x.sum()

    x = torch.randn(5, dtype=torch.float64)
    P = torch.randn(3, 5, dtype=torch.float64)
    op = kept_operator(f, x)
    expected = columns(torch.nn.Module(), f, x, P)
    for _ in range(2):  # the graph is kept between products
        torch.testing.assert_close(op(P), expected, rtol=1e-12, atol=1e-12)


def test_bench_shaped_analysis_stays_under_six_forward_equivalents():
    """The default bench's structure (12 layers, 32 tokens, order 32) at a tiny width: 3L + r layer
    evaluations (5.67 forward equivalents) against 157 for today's path; the same numbers."""
    torch.manual_seed(0)
    L, T, r = 12, 32, 32
    config = GPT2Config(n_layer=L, n_embd=48, n_head=2, vocab_size=64, n_positions=T, attn_implementation="eager")
    model = GPT2LMHeadModel(config).double().eval()
    adapter = adapter_for("gpt2")
    ids = torch.randint(0, 64, (T,))
    V = _directions(L, 48)
    with counted_blocks(model, adapter) as new_count:
        new = prompt_gains(prompt_blocks(model, adapter, ids), V, order=r)
    with counted_blocks(model, adapter) as old_count:
        old = prompt_gains_reference(prompt_context(model, adapter, ids), V, order=r)
    assert new_count.evaluations == 3 * L + r  # prefix L, Arnoldi r - 1 products + its graph, 2 calls per layer
    assert new_count.forward_equivalents <= 6
    assert old_count.evaluations == 157
    assert new_count.stubbed == L and sum(new_count.products.values()) == r - 1
    for key in ("predicted", "measured", "exact"):
        torch.testing.assert_close(getattr(new, key), getattr(old, key), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "mistral", "gemma3_text"])
def test_batched_blocks_equal_the_full_sequence_states_and_actions(tiny_dirs, family):
    """Left-padded prompts of different lengths (one of a single token) in one batch of blockwise calls."""
    handle = load(tiny_dirs[family])
    seqs = [handle.info.encode(t) for t in (PROMPT, "Paris is the capital", "The cat")] + [handle.info.encode("Hi")[:1]]
    d = handle.info.d_model
    P = torch.linalg.qr(torch.randn(d, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    blocks = batch_blocks(handle.model, handle.adapter, seqs)
    with blocks.live():
        X = blocks.states()
        actions = [blocks.actions(layer, X[:, layer], P) for layer in range(handle.n_layers)]
    states = torch.tensor(last_token_states(handle.model, handle.adapter, seqs, batch_size=1))
    torch.testing.assert_close(X, states, rtol=0, atol=1e-10)
    for layer, got in enumerate(actions):
        torch.testing.assert_close(got, last_token_actions(handle.model, handle.adapter, seqs, layer, P),
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_blockwise_mean_actions_give_the_full_sequence_krylov_bases(tiny_dirs, family):
    from lldd_core.forward.blockwise import mean_actions
    from lldd_core.linalg.llv import krylov_bases

    handle = load(tiny_dirs[family])
    seqs = [handle.info.encode(t) for t in (PROMPT, "Paris is the capital", "The cat")] + [handle.info.encode("Hi")[:1]]
    V = _directions(handle.n_layers, handle.info.d_model)
    old = krylov_bases(V, lambda layer, P: last_token_actions(handle.model, handle.adapter, seqs, layer, P).mean(0), 5)
    with counted_blocks(handle.model, handle.adapter) as count, \
            mean_actions(handle.model, handle.adapter, seqs, batch_size=3) as mean:  # two chunks
        new = krylov_bases(V, mean, 5)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert sum(count.products.values()) == 2 * 4  # Arnoldi's 4 products, per chunk (they also serve M_0 P_0)
    with mean_actions(handle.model, handle.adapter, seqs, max_cache_bytes=1) as over_budget:
        assert over_budget is None  # the caller falls back to the full-sequence path


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_blockwise_curves_equal_the_prompt_context_ones_for_every_eps(tiny_dirs, family):
    from lldd_core.analysis.gains import prompt_curves

    handle = load(tiny_dirs[family])
    L = handle.n_layers
    V = _directions(L, handle.info.d_model)
    eps = [0.1, 1e-3, 2.0]
    for ids in (handle.info.encode(PROMPT), handle.info.encode(PROMPT)[:1]):
        ctx = prompt_context(handle.model, handle.adapter, ids)
        measured, exact = prompt_curves(prompt_blocks(handle.model, handle.adapter, ids), V, eps)
        # a readout difference over ε = 1e-3 amplifies the batching round-off (~1e-15) a thousandfold
        torch.testing.assert_close(measured, torch.stack([ctx.measured_gains(V, V[L], e) for e in eps]),
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(exact, ctx.exact_gains(V, V[L]), rtol=0, atol=1e-12)
