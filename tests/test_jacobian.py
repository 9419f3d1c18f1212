"""The detached Jacobian reproduces the output exactly: y = sum_i J_i x_i + b."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.forward.linearize import detached_mode
from lldd_core.forward.residual import run_to_layer
from tests.helpers import load, normal_output, prompt_ids
from tests.tiny import BIASED, FAMILIES


def _full(handle, ids, **kw):
    op = jacobian_operator(handle.model, handle.adapter, ids, **kw)
    return op, op.full()


@pytest.mark.parametrize("family", FAMILIES)
def test_float64_reconstruction(tiny_dirs, family):
    handle = load(tiny_dirs[family], "float64")
    ids = prompt_ids(handle)
    op, full = _full(handle, ids)
    assert full.J.shape == (len(ids), op.d_out, op.d_in)
    assert relative_error(normal_output(handle, ids), op.y) < 1e-6
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-10
    # the ordinary Jacobian does not reconstruct: the model is really nonlinear here
    plain, plain_full = _full(handle, ids, detached=False)
    assert relative_error(plain.y, reconstruct(plain_full.J, plain.x0, plain_full.b)) > 1e-3
    # the bias channel is non-zero exactly for the families with biases
    bias_share = float(full.b.norm() / op.y.detach().norm())
    if family in BIASED:
        assert bias_share > 1e-3
    else:
        assert bias_share == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_reconstruction(tiny_dirs, family):
    handle = load(tiny_dirs[family], "float32")
    ids = prompt_ids(handle)
    op, full = _full(handle, ids)
    assert full.J.dtype == torch.float32
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_layer_k_reconstructs_layer_k_output(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    with torch.no_grad():
        hidden = handle.model(ids[None], output_hidden_states=True).hidden_states
    for k in range(1, handle.n_layers):
        op, full = _full(handle, ids, layer=k, final_norm=False)
        assert relative_error(hidden[k][0, -1], op.y) < 1e-6  # x_k as the model computes it
        assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-10
        normed, normed_full = _full(handle, ids, layer=k, final_norm=True)
        with torch.no_grad():
            expected = handle.adapter.final_norm(handle.model)(hidden[k][0, -1])
        assert relative_error(expected, normed.y) < 1e-6
        assert relative_error(normed.y, reconstruct(normed_full.J, normed.x0, normed_full.b)) < 1e-10


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gemma2"])
def test_matrix_free_products_match_full(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ids = prompt_ids(handle)
    op, full = _full(handle, ids)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(5, op.d_out, generator=gen, dtype=torch.float64)
    v = torch.randn(4, op.n_tokens, op.d_in, generator=gen, dtype=torch.float64)
    jtu, btu = op.rmatvec(u)
    torch.testing.assert_close(jtu, torch.einsum("tod,ko->ktd", full.J, u), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(btu, u @ full.b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(v), torch.einsum("tod,ktd->ko", full.J, v), rtol=1e-10, atol=1e-12)


def test_chunking_does_not_change_the_result(tiny_dirs):
    handle = load(tiny_dirs["phi3"])
    op, full = _full(handle, prompt_ids(handle))
    small = op.full(chunk=5)
    assert torch.equal(full.J, small.J) or torch.allclose(full.J, small.J, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(full.b, small.b)


def test_reconstruction_at_an_earlier_position(tiny_dirs):
    handle = load(tiny_dirs["mistral"])
    ids = prompt_ids(handle)
    op, full = _full(handle, ids, position=3)
    # positions after 3 do not influence it (causal)
    assert float(full.J[4:].abs().max()) == 0.0
    assert relative_error(op.y, reconstruct(full.J, op.x0, full.b)) < 1e-10


def test_run_to_layer_uses_given_x0(tiny_dirs):
    """Feeding x_0 back reproduces the run; the detached map is linear in (x_0, s)."""
    handle = load(tiny_dirs["gpt_neox"])
    ids = prompt_ids(handle)[None]
    with detached_mode(handle.model, handle.adapter), torch.no_grad():
        base = run_to_layer(handle.model, handle.adapter, ids, 2)
        again = run_to_layer(handle.model, handle.adapter, ids, 2, x0=base.x0.clone())
    torch.testing.assert_close(base.xk, again.xk)
