"""Layer views from one recorded forward: each equals the map it claims, in every family."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.forward.linearize import detached_mode
from lldd_core.forward.views import SITES, record_views
from tests.helpers import load, prompt_ids
from tests.tiny import MOE

FAMILIES = ["gpt2", "gpt_neox", "llama", "gemma3_text", "olmo2", "phi3",
            "granite", "smollm3", "olmo3", "starcoder2", "stablelm", "cohere2", "gemma3"]  # issue 19
FAMILIES += MOE  # issue 19


def _stream(handle, ids):
    """Ordinary forward: ``x_0 .. x_L`` of the last token (and all tokens), no final norm."""
    with torch.no_grad():
        out = handle.model(input_ids=ids[None], attention_mask=torch.ones_like(ids[None]), output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lens", [True, False])
def test_cumulative_view_is_the_foundation_layer_jacobian(tiny_dirs, family, lens):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    rec = record_views(handle.model, handle.adapter, ids, sites=["cumulative"], lens=lens)
    for k in range(1, handle.n_layers + 1):
        ref = jacobian_operator(handle.model, handle.adapter, ids, layer=k, final_norm=lens)
        view = rec.operators[("cumulative", k)]
        torch.testing.assert_close(view.y, ref.y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(view.full().J, ref.full().J, rtol=1e-10, atol=1e-12)


#: bias-free: y = sum_i J_i z_i (issue 19: Granite's residual multiplier, Cohere 2's parallel blocks, frozen routers)
@pytest.mark.parametrize("family", ["llama", "gemma3_text", "olmo2", "phi3", "granite", "smollm3", "olmo3", "cohere2",
                                    "gemma3", "mixtral", "qwen3_moe", "olmoe"])
def test_block_and_sublayer_views_reconstruct_their_outputs(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    rec = record_views(handle.model, handle.adapter, ids, lens=False)
    states = _stream(handle, ids)
    for k in range(1, handle.n_layers + 1):
        block = rec.operators[("block", k)]
        # the block view's input is x_{k-1}, its output x_k: the stock model's hidden states up to
        # its float32 norm rounding (the last entry of hidden_states has the final norm applied)
        torch.testing.assert_close(block.x0, states[k - 1][0], rtol=1e-5, atol=1e-5)
        if k < handle.n_layers:
            torch.testing.assert_close(block.y, states[k][0, -1], rtol=1e-5, atol=1e-5)
        for site in SITES:
            op = rec.operators[(site, k)]
            full = op.full().J
            recon = torch.einsum("tod,td->o", full, op.x0)
            err = float((recon - op.y.detach()).norm() / op.y.detach().norm())
            assert err < 1e-10, (site, k, err)
    # attention + MLP terms + input = block output (sequential residual families)
    if family != "gpt_neox":
        for k in range(1, handle.n_layers + 1):
            total = rec.operators[("block", k)].x0[-1] + rec.operators[("attention", k)].y + rec.operators[("mlp", k)].y
            torch.testing.assert_close(total, rec.operators[("block", k)].y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_mode_products_equal_reverse_and_exact(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    rec = record_views(handle.model, handle.adapter, ids)
    gen = torch.Generator().manual_seed(0)
    T, d = rec.x0.shape
    V = torch.randn(5, T, d, generator=gen, dtype=torch.float64)
    for key in [("cumulative", handle.n_layers), ("block", 1), ("attention", handle.n_layers), ("mlp", 1)]:
        op = rec.operators[key]
        exact = torch.einsum("tod,mtd->mo", op.full().J, V)
        torch.testing.assert_close(op.matvec(V, mode="reverse"), exact, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(op.matvec(V, mode="forward"), exact, rtol=1e-10, atol=1e-10)
    # the foundation operator has forward mode too
    op = jacobian_operator(handle.model, handle.adapter, ids)
    exact = torch.einsum("tod,mtd->mo", op.full().J, V)
    torch.testing.assert_close(op.matvec(V, mode="forward"), exact, rtol=1e-10, atol=1e-10)


def test_views_leave_the_model_untouched(tiny_dirs):
    handle = load(tiny_dirs["gpt2"])
    ids = prompt_ids(handle)
    blocks = handle.adapter.layers(handle.model)
    before = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks]
    rec = record_views(handle.model, handle.adapter, ids)
    rec.operators[("block", 2)].matvec(torch.zeros(1, *rec.x0.shape, dtype=torch.float64), mode="forward")
    assert [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks] == before
    assert handle.model.config._attn_implementation != "lldd_detached"
    with pytest.raises(ValueError):
        record_views(handle.model, handle.adapter, ids, sites=["nope"])
    with pytest.raises(ValueError):
        record_views(handle.model, handle.adapter, ids, layers=[handle.n_layers + 1])


def test_detached_mode_is_restored_after_an_error_in_a_view(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    with pytest.raises(ValueError):
        with detached_mode(handle.model, handle.adapter):
            raise ValueError("boom")
    assert all("forward" not in m.__dict__ for m in handle.model.modules())
