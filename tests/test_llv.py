"""The LLV surrogate: bases, reduced model and predicted gains against the exact linear gains."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.depth import prompt_context
from lldd_core.linalg.llv import (
    _orthonormal_with_first,
    krylov_bases,
    pca_bases,
    predicted_gains,
    random_bases,
    reduced_model,
)
from tests.helpers import load

PROMPTS = ["The cat says meow and the dog", "Paris is the capital of France", "Please could you pass the salt"]


def _setup(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    ctxs = [prompt_context(handle.model, handle.adapter, handle.info.encode(p)) for p in PROMPTS]
    L, d = ctxs[0].n_layers, ctxs[0].states.shape[1]
    gen = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(L + 1, d, generator=gen, dtype=torch.float64), dim=-1)
    return handle, ctxs, V


def _mean_action(ctxs):
    return lambda layer, P: torch.stack([c.jacobian_actions(layer, P) for c in ctxs]).mean(0)


def _predict(ctx, bases):
    actions = [ctx.jacobian_actions(layer, bases[layer]) for layer in range(ctx.n_layers)]
    return predicted_gains(reduced_model(bases, actions))


def test_basis_is_orthonormal_with_v_first():
    gen = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(10, generator=gen, dtype=torch.float64), dim=0)
    cand = torch.cat([v[:, None], torch.randn(10, 3, generator=gen, dtype=torch.float64)], dim=1)  # one dependent
    P = _orthonormal_with_first(v, cand, 6)  # completed from the standard basis
    torch.testing.assert_close(P.T @ P, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(P[:, 0], v, rtol=0, atol=1e-15)
    with pytest.raises(ValueError):
        _orthonormal_with_first(v, cand, 11)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_full_order_prediction_equals_the_exact_linear_gain(tiny_dirs, family):
    _, ctxs, V = _setup(tiny_dirs, family)
    d = V.shape[1]
    ctx = ctxs[0]
    exact = ctx.exact_gains(V, V[-1])
    states = torch.stack([c.states for c in ctxs])
    for bases in (krylov_bases(V, _mean_action(ctxs), d), random_bases(V, d), pca_bases(V, states, d)):
        torch.testing.assert_close(_predict(ctx, bases), exact, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_krylov_on_the_prompts_own_jacobians_is_exact_at_low_order(tiny_dirs, family):
    """With the prompt's own A_l as the 'mean', P_l holds every propagated injection once r >= L + 1."""
    _, ctxs, V = _setup(tiny_dirs, family)
    ctx = ctxs[0]
    L = ctx.n_layers
    bases = krylov_bases(V, lambda layer, P: ctx.jacobian_actions(layer, P), L + 1)
    assert bases[0].shape == (V.shape[1], L + 1)
    torch.testing.assert_close(_predict(ctx, bases), ctx.exact_gains(V, V[-1]), rtol=1e-8, atol=1e-10)
    # a random complement of the same order is not exact
    assert float((_predict(ctx, random_bases(V, L + 1)) - ctx.exact_gains(V, V[-1])).abs().max()) > 1e-3


def test_predicted_gains_of_a_known_chain():
    A = [torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64), torch.tensor([[1.0, 4.0], [5.0, 1.0]],
                                                                                   dtype=torch.float64)]
    g = predicted_gains(A)
    # g_1 = e1^T A_1 e1 = 1; g_0 = e1^T A_1 A_0 e1 = [1, 4] @ [2, 0] = 2
    torch.testing.assert_close(g, torch.tensor([2.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prompt_gains_reuses_the_krylov_actions_and_is_exact_past_depth(tiny_dirs, family):
    from lldd_core.analysis.gains import prompt_gains

    _, ctxs, V = _setup(tiny_dirs, family)
    ctx = ctxs[0]
    L = ctx.n_layers
    out = prompt_gains(ctx, V, order=L + 1, eps=1e-5)
    # the kept actions are the reduced model's A_l P_l: the same curve as applying the Jacobians again
    torch.testing.assert_close(out.predicted, _predict(ctx, out.bases), rtol=1e-10, atol=1e-12)
    # the same basis as krylov_bases without kept actions (which applies r - 1 columns only)
    plain = krylov_bases(V, ctx.jacobian_actions, L + 1)
    for a, b in zip(out.bases, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the prompt's own Jacobians: exact once r > L; measured tends to exact with small eps
    torch.testing.assert_close(out.predicted, out.exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out.measured, out.exact, rtol=1e-3, atol=1e-6)
    # forward-mode tangents through the blocks against one backward pass: the same gains up to rounding
    exact_again = ctx.exact_gains(V, V[L])
    torch.testing.assert_close(out.exact, exact_again, rtol=1e-12, atol=1e-12)
