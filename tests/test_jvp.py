"""Jacobian products: the three modes agree, and a model without forward AD falls back and says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from lldd_core.forward.depth import last_token_actions
from lldd_core.forward.jvp import MODES, columns, jvp_columns, model_mode, notice
from tests.helpers import load

PROMPTS = [[5, 9, 11, 40], [7, 3, 60], [12, 13, 14, 15, 16]]


def test_modes_agree_on_a_nonlinear_function():
    torch.manual_seed(0)
    W = torch.randn(5, 4, dtype=torch.float64)

    def f(x):
        return torch.tanh(W @ x) * x.sum()

    x, P = torch.randn(4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    exact = torch.func.jacfwd(f)(x) @ P.T
    for mode in MODES:
        got = jvp_columns(f, x, P, mode)
        torch.testing.assert_close(got.T, exact, rtol=0, atol=1e-6 if mode == "fd" else 1e-12)  # fd: O(h²)


class _LinearNoJvp(torch.autograd.Function):
    """``x W^T`` with a backward but no forward-mode formula (like a quantized matmul)."""

    @staticmethod
    def forward(x, weight):
        return x @ weight.T

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class _LinearOnceDifferentiable(_LinearNoJvp):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class _Swapped(nn.Module):
    def __init__(self, linear: nn.Linear, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.weight, self.fn = linear.weight, fn

    def forward(self, x):
        return self.fn.apply(x, self.weight)


def _model_without_forward_ad(tiny_dirs, fn):
    handle = load(tiny_dirs["llama"])
    for block in handle.adapter.layers(handle.model):
        block.mlp.down_proj = _Swapped(block.mlp.down_proj, fn)
    return handle


@pytest.mark.parametrize(("fn", "expected"), [(_LinearNoJvp, "reverse"), (_LinearOnceDifferentiable, "fd")])
def test_layers_without_forward_ad_fall_back_and_say_so(tiny_dirs, fn, expected):
    reference = load(tiny_dirs["llama"])
    handle = _model_without_forward_ad(tiny_dirs, fn)
    d = handle.info.d_model
    P = torch.randn(d, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert model_mode(handle.model) == "forward" and notice(handle.model) is None
    want = last_token_actions(reference.model, reference.adapter, PROMPTS, 1, P)
    got = last_token_actions(handle.model, handle.adapter, PROMPTS, 1, P)
    assert model_mode(handle.model) == expected
    assert ("reverse-over-reverse" if expected == "reverse" else "finite differences") in notice(handle.model)
    tol = 1e-10 if expected == "reverse" else 1e-6 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert notice(reference.model) is None  # the plain model keeps forward mode


def test_out_of_memory_is_not_taken_for_a_missing_formula():
    model = nn.Linear(2, 2)

    def f(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        columns(model, f, torch.zeros(2), torch.eye(2))
    assert model_mode(model) == "forward"
