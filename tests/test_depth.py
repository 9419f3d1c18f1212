"""Depth dynamics of the last token: states, frozen-context maps, Jacobian actions, gains."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.depth import last_token_actions, last_token_states, pad_batch, prompt_context
from tests.helpers import load
from tests.tiny import MOE

FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2", "gemma3_text", "olmo2", "phi3", "mistral",
            "granite", "smollm3", "olmo3", "starcoder2", "stablelm", "cohere2", "gemma3"]  # issue 19
FAMILIES += MOE  # issue 19
PROMPTS = ["The cat says meow and the dog", "Paris is the capital", "The Golden Gate Bridge is in San Francisco ."]


def _ids(handle, text):
    return handle.info.encode(text)


@pytest.mark.parametrize("family", FAMILIES)
def test_states_batched_left_and_right_equal_unbatched_and_the_frozen_context(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    seqs = [_ids(handle, p) for p in PROMPTS]
    assert len({len(s) for s in seqs}) > 1  # padding really happens
    single = torch.tensor(last_token_states(handle.model, handle.adapter, seqs, batch_size=1))
    for side in ("left", "right"):
        batched = torch.tensor(last_token_states(handle.model, handle.adapter, seqs, side=side, batch_size=3))
        torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-10)
    for i, seq in enumerate(seqs):
        ctx = prompt_context(handle.model, handle.adapter, seq)
        torch.testing.assert_close(ctx.states, single[i], rtol=1e-10, atol=1e-10)
        # the stock forward's hidden states 0..L-1 (its last entry carries the final norm)
        with torch.no_grad():
            hs = handle.model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
        for layer in range(handle.n_layers):
            torch.testing.assert_close(ctx.states[layer], hs[layer][0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_context_maps_reproduce_the_forward(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ctx = prompt_context(handle.model, handle.adapter, _ids(handle, PROMPTS[2]))
    for layer in range(ctx.n_layers):
        torch.testing.assert_close(ctx.block_map(layer, ctx.states[layer : layer + 1])[0], ctx.states[layer + 1],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "gemma3_text", "qwen2", "phi3", "granite", *MOE])
def test_jvp_actions_equal_central_differences(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ctx = prompt_context(handle.model, handle.adapter, _ids(handle, PROMPTS[0]))
    d = ctx.states.shape[1]
    P = torch.linalg.qr(torch.randn(d, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    for layer in range(ctx.n_layers):
        jvp = ctx.jacobian_actions(layer, P)
        fd = ctx.fd_actions(layer, P, h=1e-5)
        assert jvp.shape == (d, 5)
        torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_measured_gains_converge_to_the_exact_linear_gains(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ctx = prompt_context(handle.model, handle.adapter, _ids(handle, PROMPTS[1]))
    L, d = ctx.n_layers, ctx.states.shape[1]
    V = torch.nn.functional.normalize(torch.randn(L + 1, d, generator=torch.Generator().manual_seed(1),
                                                  dtype=torch.float64), dim=-1)
    w = V[L]
    exact = ctx.exact_gains(V, w)
    errors = [float((ctx.measured_gains(V, w, eps) - exact).abs().max()) for eps in (1e-1, 1e-2, 1e-3, 1e-4)]
    # one-sided differences: the error shrinks like eps (measured ~10x per decade)
    assert all(later < 0.2 * earlier for earlier, later in zip(errors[1:], errors[2:])), errors
    assert errors[-1] < 1e-3 * float(exact.abs().max()), errors
    # exact gains = gradient . v, checked against the JVP chain A_{L-1} ... A_k v_k
    for k in range(L):
        v = V[k][:, None]
        for layer in range(k, L):
            v = ctx.jacobian_actions(layer, v)
        torch.testing.assert_close(exact[k], (w @ v)[0], rtol=1e-9, atol=1e-12)


def test_pad_batch_sides():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[1]], 0, side="middle")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text", "gpt_neox"])
def test_batched_actions_equal_each_prompts_frozen_context_actions(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    seqs = [_ids(handle, p) for p in PROMPTS]
    d = handle.info.d_model
    P = torch.linalg.qr(torch.randn(d, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))[0]
    for layer in range(handle.n_layers):
        batched = last_token_actions(handle.model, handle.adapter, seqs, layer, P, batch_size=2)
        for i, seq in enumerate(seqs):
            ctx = prompt_context(handle.model, handle.adapter, seq)
            torch.testing.assert_close(batched[i], ctx.jacobian_actions(layer, P), rtol=1e-10, atol=1e-10)
