"""Matrix-free top-k SVD of every J_i against the exact SVD of the full Jacobian."""

from __future__ import annotations

import pytest
import torch

from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.linalg.spectral import choose_method, fix_signs, svd_full, top_singular, topk_svd
from tests.helpers import load, prompt_ids

K = 4


def _op_and_J(tiny_dirs, family, **kw):
    handle = load(tiny_dirs[family], "float64")
    op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle), **kw)
    return op, op.full().J


def _true_residual(J: torch.Tensor, U, S, V) -> torch.Tensor:
    """The residual formula of TopKSVD evaluated with the full J (independent of the operator)."""
    fwd = torch.linalg.vector_norm(J @ V - U * S[:, None, :], dim=1)
    bwd = torch.linalg.vector_norm(J.mT @ U - V * S[:, None, :], dim=1)
    top = S[:, :1]
    return torch.maximum(fwd, bwd) / torch.where(top > 0, top, torch.ones_like(top))


def _angle_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``min(||a - b||, ||a + b||)`` per column of ``[T, d, k]`` unit vectors (sign-blind angle)."""
    return torch.minimum(torch.linalg.vector_norm(a - b, dim=1), torch.linalg.vector_norm(a + b, dim=1))


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "qwen2", "phi3"])
def test_matrix_free_matches_full_svd(tiny_dirs, family):
    op, J = _op_and_J(tiny_dirs, family)
    mf = topk_svd(op, K, tol=1e-10)
    ex = svd_full(J, K)
    assert mf.method == "matrix_free" and ex.method == "full"
    assert mf.converged and ex.converged
    assert mf.U.shape == (op.n_tokens, op.d_out, K) and mf.V.shape == (op.n_tokens, op.d_in, K)
    sv = torch.linalg.svdvals(J)
    torch.testing.assert_close(ex.S, sv[:, :K], rtol=1e-12, atol=0)
    torch.testing.assert_close(mf.S, sv[:, :K], rtol=1e-8, atol=0)
    # the reported residual is the true one (same formula, evaluated with J itself)
    torch.testing.assert_close(mf.residual, _true_residual(J, mf.U, mf.S, mf.V), rtol=1e-3, atol=1e-14)
    # Wedin: a vector's angle error is at most ~ residual / (gap to the rest of the spectrum);
    # near-degenerate values only get the loose bound, separated ones must match closely.
    rel = sv / sv[:, :1]
    gaps = (rel[:, :K, None] - rel[:, None, :]).abs()
    gaps[:, torch.arange(K), torch.arange(K)] = float("inf")
    gap = gaps.min(-1).values  # [T, K]
    bound = 4 * mf.residual / gap + 1e-9
    assert bool((_angle_error(mf.U, ex.U) <= bound).all())
    assert bool((_angle_error(mf.V, ex.V) <= bound).all())
    assert int((gap > 1e-2).sum()) >= J.shape[0]  # most triplets are separated, so this bites
    # the top-k subspaces agree wherever s_k is separated from s_{k+1}
    sep = (rel[:, K - 1] - rel[:, K]) > 1e-2
    proj = lambda A: A @ A.mT  # noqa: E731
    assert float((proj(mf.U) - proj(ex.U))[sep].abs().max()) < 1e-7


def test_residual_is_honest_when_not_converged(tiny_dirs):
    op, J = _op_and_J(tiny_dirs, "gpt2")
    rough = topk_svd(op, K, oversample=0, iters=0)
    assert not rough.converged
    assert float(rough.residual.max()) > 1e-3
    torch.testing.assert_close(rough.residual, _true_residual(J, rough.U, rough.S, rough.V), rtol=1e-8, atol=1e-14)
    one = topk_svd(op, K, oversample=1, iters=1, tol=1e-10, shared=False, scheme="krylov")
    assert not one.converged and float(one.residual.max()) > 1e-10
    assert rough.n_products < one.n_products


def test_zero_blocks_and_causality(tiny_dirs):
    """Output at position 3: later tokens have J_i = 0, which must come out as s = 0, residual 0."""
    op, J = _op_and_J(tiny_dirs, "mistral", position=3)
    mf = topk_svd(op, K, tol=1e-10)
    assert mf.converged and bool(torch.isfinite(mf.residual).all())
    assert float(mf.S[4:].abs().max()) == 0.0
    torch.testing.assert_close(mf.S, torch.linalg.svdvals(J)[:, :K], rtol=1e-8, atol=1e-14)


def test_choose_method_and_dispatch(tiny_dirs):
    assert choose_method(32, 14, 4) == "full"
    assert choose_method(4096, 4, 4) == "matrix_free"
    assert choose_method(4096, 4000, 4) == "full"
    op, J = _op_and_J(tiny_dirs, "gpt2")
    auto = top_singular(op, K)
    assert auto.method == "full" and auto.n_products == op.d_out
    mf = top_singular(op, K, method="matrix_free", tol=1e-10)
    assert mf.method == "matrix_free" and mf.n_products > op.d_out
    torch.testing.assert_close(mf.S, auto.S, rtol=1e-8, atol=0)
    with pytest.raises(ValueError):
        top_singular(op, K, method="nope")
    with pytest.raises(ValueError):
        topk_svd(op, op.d_out + 1)


def test_fix_signs(tiny_dirs):
    op, J = _op_and_J(tiny_dirs, "llama")
    J_x = torch.einsum("tod,td->to", J, op.x0)
    for svd in (svd_full(J, K), topk_svd(op, K, tol=1e-10)):
        fixed = fix_signs(svd, J_x)
        assert bool((torch.einsum("tok,to->tk", fixed.U, J_x) >= 0).all())
        before = svd.U @ torch.diag_embed(svd.S) @ svd.V.mT
        after = fixed.U @ torch.diag_embed(fixed.S) @ fixed.V.mT
        torch.testing.assert_close(after, before, rtol=0, atol=1e-14)
        flips = (fixed.U * svd.U).sum(1)  # +-1 per pair
        torch.testing.assert_close(flips.abs(), torch.ones_like(flips))
        torch.testing.assert_close((fixed.V * svd.V).sum(1), flips)
        torch.testing.assert_close(fixed.residual, svd.residual)


def _constructed(sv: list[list[float]], d: int = 24, seed: int = 0):
    """A linear operator ``y = sum_i A_i x_i`` whose blocks have the given singular values."""
    from lldd_core.forward.jacobian import JacobianOperator

    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for values in sv:
        U = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        s = torch.zeros(d, dtype=torch.float64)
        s[: len(values)] = torch.tensor(values, dtype=torch.float64)
        blocks.append(U @ torch.diag(s) @ V.T)
    A = torch.stack(blocks)
    x0 = torch.randn(1, len(sv), d, generator=gen, dtype=torch.float64, requires_grad=True)
    s_leaf = torch.ones((), dtype=torch.float64, requires_grad=True)
    y = torch.einsum("tod,td->o", A, x0[0])
    return JacobianOperator(x0=x0, s=s_leaf, y=y, intermediate=d), A


def test_stable_rank_equals_its_definition_on_a_constructed_matrix():
    values = [[4.0, 2.0, 1.0, 0.5, 0.25], [3.0, 3.0, 1.0], [1.0] + [0.1] * 15]
    op, A = _constructed(values)
    expected = torch.tensor([sum(v * v for v in row) / row[0] ** 2 for row in values], dtype=torch.float64)
    full = top_singular(op, 3, method="full")
    torch.testing.assert_close(full.stable_rank, expected, rtol=1e-12, atol=0)
    assert float(full.stable_rank_se.abs().max()) == 0.0
    # matrix-free: exact part in span(U) + Hutchinson estimate of the rest, within its own error bars
    mf = topk_svd(op, 3, tol=1e-10, probes=64)
    err = (mf.stable_rank - expected).abs()
    assert bool((err <= 4 * mf.stable_rank_se + 1e-9).all()), (mf.stable_rank, expected, mf.stable_rank_se)
    # rank <= l: the sketch captures everything, so the "estimate" is exact
    op2, _ = _constructed([[5.0, 1.0]], d=24, seed=1)
    exact = topk_svd(op2, 2, tol=1e-10)
    torch.testing.assert_close(exact.stable_rank, torch.tensor([26.0 / 25.0], dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_frobenius_estimate_on_models_is_within_error_bars(tiny_dirs, family):
    op, J = _op_and_J(tiny_dirs, family)
    mf = topk_svd(op, K, tol=1e-10, probes=64)
    exact = J.pow(2).sum((1, 2))
    assert bool(((mf.frobenius_sq - exact).abs() <= 4 * mf.frobenius_se + 1e-9 * exact).all())
    assert bool((mf.frobenius_se < 0.2 * exact).all())  # informative, not vacuous


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_forward_mode_products_give_the_same_svd(tiny_dirs, family):
    op, J = _op_and_J(tiny_dirs, family)
    rev = topk_svd(op, K, tol=1e-10)
    fwd = topk_svd(op, K, tol=1e-10, products="forward")
    torch.testing.assert_close(fwd.S, rev.S, rtol=1e-9, atol=0)
    torch.testing.assert_close(fwd.S, torch.linalg.svdvals(J)[:, :K], rtol=1e-8, atol=0)
    assert fwd.converged


def test_wide_full_path_uses_krylov_on_the_formed_matrix(tiny_dirs, monkeypatch):
    import lldd_core.linalg.spectral as spectral

    op, J = _op_and_J(tiny_dirs, "gpt2")
    exact = svd_full(J, K, tol=1e-9)
    monkeypatch.setattr(spectral, "EXACT_SVD_MAX_D", 8)  # force the Krylov branch on d = 32
    krylov = svd_full(J, K, tol=1e-9)
    assert krylov.method == "full" and krylov.converged and krylov.n_products == 0
    torch.testing.assert_close(krylov.S, exact.S, rtol=1e-9, atol=0)
    torch.testing.assert_close(krylov.frobenius_sq, J.pow(2).sum((1, 2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(krylov.residual, _true_residual(J, krylov.U, krylov.S, krylov.V), rtol=1e-3, atol=1e-14)


@pytest.mark.parametrize("shared", [True, False])
def test_both_phases_are_honest_on_a_flat_spectrum(shared):
    values = [[1.0 - 0.01 * j for j in range(20)], [2.0 - 0.02 * j for j in range(20)]]
    op, A = _constructed(values)
    cut = topk_svd(op, 2, oversample=0, iters=1, tol=1e-10, shared=shared, probes=0, scheme="krylov")
    assert not cut.converged
    torch.testing.assert_close(cut.residual, _true_residual(A, cut.U, cut.S, cut.V), rtol=1e-6, atol=1e-14)
    done = topk_svd(op, 2, tol=1e-10, shared=shared, scheme="krylov")
    assert done.converged
    torch.testing.assert_close(done.S, torch.linalg.svdvals(A)[:, :2], rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_shared_phase_matches_the_exact_svd(tiny_dirs, family):
    op, J = _op_and_J(tiny_dirs, family)
    mf = topk_svd(op, K, tol=1e-10, shared=True, scheme="krylov")
    assert mf.converged
    torch.testing.assert_close(mf.S, torch.linalg.svdvals(J)[:, :K], rtol=1e-8, atol=0)
    torch.testing.assert_close(mf.residual, _true_residual(J, mf.U, mf.S, mf.V), rtol=1e-3, atol=1e-14)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("k", [5, 6, 24])
def test_rank_deficient_blocks_give_k_true_triplets(shared, k):
    """Blocks of rank 3..5 in d = 24 with k up to the width: k triplets, the missing ones s = 0 with unit
    vectors in the null spaces (a top-k equal to the width once came back one column short, and was cached)."""
    values = [[4.0, 2.0, 1.0, 0.5, 0.25], [3.0, 3.0, 1.0], [2.0, 1.0, 0.5, 0.1]]
    op, A = _constructed(values)
    mf = topk_svd(op, k, tol=1e-10, shared=shared, scheme="krylov")
    assert mf.S.shape == (3, k) and mf.U.shape == (3, 24, k) and mf.V.shape == (3, 24, k)
    torch.testing.assert_close(mf.S, torch.linalg.svdvals(A)[:, :k], rtol=1e-8, atol=1e-12)
    eye = torch.eye(k, dtype=torch.float64).expand(3, k, k)
    torch.testing.assert_close(mf.V.mT @ mf.V, eye, rtol=0, atol=1e-8)
    torch.testing.assert_close(mf.U.mT @ mf.U, eye, rtol=0, atol=1e-8)
    assert mf.converged
    torch.testing.assert_close(mf.residual, _true_residual(A, mf.U, mf.S, mf.V), rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_matrix_free_top_k_equal_to_the_width(tiny_dirs, family):
    """GPT-2's final LayerNorm removes the mean: rank d - 1, so the last triplet is s = 0."""
    op, J = _op_and_J(tiny_dirs, family)
    d = op.d_out
    mf = topk_svd(op, d, tol=1e-8)
    assert mf.S.shape == (op.n_tokens, d) and mf.converged
    torch.testing.assert_close(mf.S, torch.linalg.svdvals(J), rtol=1e-6, atol=1e-10)


def _gained(T: int = 8, d: int = 128, decay: float = 1.0, seed: int = 0):
    """``T`` blocks ``D U_i diag((j+1)^-decay) V_i^T`` with one heavy-tailed output gain ``D`` (a final norm's)."""
    from lldd_core.forward.jacobian import JacobianOperator

    gen = torch.Generator().manual_seed(seed)
    gain = 1 + torch.randn(d, generator=gen, dtype=torch.float64).abs() ** 3
    s = (torch.arange(d, dtype=torch.float64) + 1) ** -decay
    blocks = []
    for _ in range(T):
        U = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        blocks.append(gain[:, None] * (U * s) @ V.T)
    A = torch.stack(blocks)
    x0 = torch.randn(1, T, d, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.einsum("tod,td->o", A, x0[0])
    return JacobianOperator(x0=x0, s=torch.ones((), dtype=torch.float64, requires_grad=True), y=y, intermediate=d), A


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_mixed_scheme_agrees_with_krylov_within_residuals_and_needs_fewer_products(decay):
    op, A = _gained(decay=decay)
    old = topk_svd(op, 8, scheme="krylov", tol=1e-2, oversample=4, iters=30)
    new = topk_svd(op, 8, tol=1e-2, oversample=4, iters=30, scheme="mixed")
    assert old.converged and new.converged
    s1 = old.S[:, :1]
    # each Ritz value lies within (its residual x s_1) of a true singular value: the two agree within both
    assert bool(((new.S - old.S).abs() <= (new.residual + old.residual) * s1 + 1e-12).all())
    torch.testing.assert_close(new.residual, _true_residual(A, new.U, new.S, new.V), rtol=1e-3, atol=1e-14)
    assert new.n_products < old.n_products


def test_krylov_is_the_default_scheme():
    """The opt-in ``mixed`` scheme is less accurate on the smaller σ at the analyses' tolerance (bench/README.md),
    so ``topk_svd`` without a scheme is ``krylov``, product for product."""
    op, _ = _gained(decay=1.0)
    default, krylov = topk_svd(op, 8, tol=1e-2, oversample=4), topk_svd(op, 8, tol=1e-2, oversample=4, scheme="krylov")
    assert default.n_products == krylov.n_products
    torch.testing.assert_close(default.S, krylov.S, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mixed_scheme_matches_the_exact_svd_on_models(tiny_dirs, family):
    op, J = _op_and_J(tiny_dirs, family)
    mf = topk_svd(op, K, tol=1e-10, scheme="mixed")
    assert mf.converged
    torch.testing.assert_close(mf.S, torch.linalg.svdvals(J)[:, :K], rtol=1e-8, atol=0)
    torch.testing.assert_close(mf.residual, _true_residual(J, mf.U, mf.S, mf.V), rtol=1e-3, atol=1e-14)


def test_auto_never_forms_a_jacobian_that_does_not_fit():
    from lldd_core.analysis.spectrum import AUTO_FULL_BYTES, auto_method

    assert choose_method(1024, 512, 8) == "full"  # by products alone: d = 1024 beats ~12k matrix-free products
    # past the budget a long prompt streams (2 passes of d products against ~12k per-token products) ...
    assert choose_method(1024, 512, 8, full_bytes=512 * 1024 * 1024 * 4 - 1) == "streamed"
    assert 512 * 1024 * 1024 * 4 > AUTO_FULL_BYTES
    assert auto_method(1024, 512, 8, torch.float32) == "streamed"  # T = 512, d = 1024: 2 GiB is never formed
    # ... and a short prompt of a wide model whose J does not fit still goes matrix-free
    assert choose_method(8192, 16, 8, full_bytes=1 << 30) == "matrix_free"
    assert auto_method(32, 14, 4, torch.float64) == "full"
