"""Top-``k`` triplets of every ``J_i`` on one output-space basis grown mostly by products shared by all tokens.

A product buys different amounts: a VJP with cotangent ``q`` returns ``J_i^T q`` for *every* token
(``T`` right-space vectors), a summed product ``sum_i J_i x_i`` one output vector that mixes all
tokens, and a per-token product ``J_i v`` one output vector for one token. Rayleigh-Ritz on a shared
orthonormal output basis ``Q`` (``d_out x m``) needs only VJPs: ``B_i = Q^T J_i`` for all tokens, the
Ritz triplets ``u = Q U~``, ``s``, ``v = Ṽ`` from ``B_i = U~ diag(s) Ṽ^T``, with ``J_i^T u = s v``
exactly. What is left is the forward residual ``||J_i v - s u|| = ||(I - Q Q^T) J_i v||``, which
needs one per-token product per triplet. So :func:`topk_svd_mixed` spends per-token products only
on measuring residuals, and builds ``Q`` from

1. a Gaussian sketch ``G`` (``n`` columns; ``Q^T J_i`` comes with the sketch's one VJP) — separate
   Hutchinson probes estimate ``||J_i||_F^2`` outside ``Q``, as in :func:`~lldd_core.linalg.spectral.topk_svd_krylov`;
2. :data:`MIXED_STEPS` block Krylov steps of ``C = sum_i J_i J_i^T / s_i^2`` (``s_i``: each token's
   current top Ritz value, so every token weighs alike): ``C X`` is ``n`` summed products of the
   VJP images already at hand (``x_i = J_i^T X / s_i^2``), then ``n`` VJPs give ``Q^T J_i`` of the
   new block for all tokens — one product per direction, whatever ``T``;
3. rounds of residual checks: ``k`` per-token products for each token not yet converged; the
   residual vectors ``(I - Q Q^T) J_i v`` of the triplets still above ``tol`` are the next block
   (a Krylov step of ``J_i J_i^T`` for exactly the tokens that need one). A token whose top ``k``
   residuals are all ``<= tol * s_1`` keeps its triplets: later rounds skip it.

Products: ``n + probes + 2 n MIXED_STEPS + sum over rounds (k * T_open + new directions)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .dense import DenseOperator

if TYPE_CHECKING:
    from ..forward.jacobian import JacobianOperator
    from .spectral import TopKSVD

#: Block Krylov steps of the token-balanced ``C = sum_i J_i J_i^T / s_i^2`` before the first residual check.
#: Two measured best at d = 2048 (bench/spectral.py at --decay 1.0 and 0.5): fewer leave more rounds of
#: per-token checks, more add shared directions that the converged tokens no longer need.
MIXED_STEPS = 2


def _orth_against(X: torch.Tensor, Q: torch.Tensor, rel: float) -> torch.Tensor:
    """Orthonormal directions of ``X`` (``[d, c]``) outside span(``Q``), those above ``rel`` of ``X``'s largest."""
    if X.shape[1] == 0:
        return X
    X = X - Q @ (Q.mT @ X)
    X = X - Q @ (Q.mT @ X)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    scale = float(torch.linalg.vector_norm(X, dim=0).max()) if X.numel() else 0.0
    keep = S > rel * max(scale, torch.finfo(X.dtype).tiny)
    Qn = U[:, keep][:, : Q.shape[0] - Q.shape[1]]
    return torch.linalg.qr(Qn - Q @ (Q.mT @ Qn))[0] if Qn.shape[1] else Qn


def _images(op: JacobianOperator | DenseOperator, Qn: torch.Tensor) -> torch.Tensor:
    """``Qn^T J_i`` for every token ``[T, c, d_in]`` (one VJP per column of ``Qn``)."""
    from .spectral import _shared_rmatvec

    return _shared_rmatvec(op, Qn.mT.contiguous()).permute(1, 0, 2)


def _summed(op: JacobianOperator | DenseOperator, X: torch.Tensor, products: str) -> torch.Tensor:
    """``sum_i J_i X_i`` for per-token directions ``X`` ``[T, d_in, c]`` -> ``[d_out, c]`` (one product per column)."""
    from .spectral import product_chunk

    if isinstance(op, DenseOperator):
        return torch.einsum("tod,tdc->oc", op.J, X)
    dirs = X.permute(2, 0, 1)
    step = product_chunk(op)
    return torch.cat([op.matvec(dirs[i : i + step], mode=products) for i in range(0, dirs.shape[0], step)]).mT


def topk_svd_mixed(
    op: JacobianOperator | DenseOperator,
    k: int,
    *,
    oversample: int = 8,
    iters: int = 60,
    tol: float = 1e-6,
    seed: int = 0,
    probes: int = 16,
    products: str = "reverse",
) -> TopKSVD:
    """Top-``k`` triplets of every ``J_i`` by the shared-basis scheme of the module doc.

    ``n = min(d_out, k + 2 * oversample)`` sketch and Krylov columns; at most ``iters`` rounds of
    residual checks. The reported ``residual`` is measured like :func:`~lldd_core.linalg.spectral.topk_svd_krylov`'s:
    the forward residual from the check's own products, the backward one exactly zero up to rounding.
    """
    from .spectral import _finish, _per_token_matvec, _random_complement, _rel_residual, _shared_rmatvec

    T, d_out, d_in = op.n_tokens, op.d_out, op.d_in
    if not 1 <= k <= min(d_out, d_in):
        raise ValueError(f"k={k} must lie in [1, {min(d_out, d_in)}]")
    dtype, device = op.y.dtype, op.y.device
    rel = 10 * torch.finfo(dtype).eps
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = min(d_out, k + 2 * oversample)
    G = torch.randn(d_out, n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    Gp = torch.randn(d_out, probes, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    gx = _shared_rmatvec(op, torch.cat([G.T, Gp.T]))  # [n + probes, T, d_in]
    n_products = n + probes
    H = gx[n:].permute(1, 2, 0)  # J_i^T Gp  [T, d_in, probes]
    Q, R = torch.linalg.qr(G)
    B = torch.linalg.solve_triangular(R.mT, gx[:n].permute(1, 0, 2), upper=False)  # Q^T J_i = R^-T G^T J_i
    last = B  # the newest block's images Q_b^T J_i
    for _ in range(MIXED_STEPS):
        if Q.shape[1] >= d_out:
            break
        top = torch.linalg.matrix_norm(B, ord=2)  # [T] each token's current s_1 (a lower bound)
        weight = torch.where(top > 0, 1 / torch.where(top > 0, top, 1) ** 2, torch.zeros_like(top))
        Y = _summed(op, last.mT * weight[:, None, None], products)  # C Q_b
        n_products += last.shape[1]
        Qn = _orth_against(Y, Q, rel)
        if Qn.shape[1] == 0:
            break
        last = _images(op, Qn)
        n_products += Qn.shape[1]
        Q, B = torch.cat([Q, Qn], dim=1), torch.cat([B, last], dim=1)

    U = torch.zeros(T, d_out, k, dtype=dtype, device=device)
    S = torch.zeros(T, k, dtype=dtype, device=device)
    V = torch.zeros(T, d_in, k, dtype=dtype, device=device)
    residual = torch.full((T, k), float("inf"), dtype=dtype, device=device)
    open_ = torch.ones(T, dtype=torch.bool, device=device)
    for _ in range(max(iters, 0) + 1):
        if Q.shape[1] < k:  # too few shared directions for k triplets (rank-deficient blocks): complete at random
            Qn = _random_complement(Q[None], k - Q.shape[1], gen)[0]
            Bn = _images(op, Qn)
            n_products += Qn.shape[1]
            Q, B = torch.cat([Q, Qn], dim=1), torch.cat([B, Bn], dim=1)
        idx = open_.nonzero().flatten()
        Ut, St, Vh = torch.linalg.svd(B[idx], full_matrices=False)
        Ui, Si, Vi = Q @ Ut[..., :k], St[:, :k], Vh[:, :k].mT
        F = _per_token_matvec(op, Vi, products, tokens=None if len(idx) == T else idx)
        n_products += len(idx) * k
        fwd = F - Ui * Si[:, None, :]
        back = B[idx].mT @ Ut[..., :k] - Vi * Si[:, None, :]  # rounding only: J_i^T u = B_i^T U~
        res = _rel_residual(fwd, back, Si)
        U[idx], S[idx], V[idx], residual[idx] = Ui, Si, Vi, res
        done = (res <= tol).all(1)
        open_[idx[done]] = False
        if not bool(open_.any()) or Q.shape[1] >= d_out:
            break
        cols = torch.cat([fwd[i][:, res[i] > tol] for i in (~done).nonzero().flatten().tolist()], dim=1)
        Qn = _orth_against(cols, Q, rel)
        if Qn.shape[1] == 0:
            break  # the residuals are rounding: no direction outside Q is left to add
        Bn = _images(op, Qn)
        n_products += Qn.shape[1]
        Q, B = torch.cat([Q, Qn], dim=1), torch.cat([B, Bn], dim=1)
    if Q.shape[1] >= d_out:  # Q spans the output space: the Ritz triplets are exact up to rounding
        residual = torch.where(torch.isfinite(residual), residual, torch.zeros_like(residual))
    return _finish(U, S, V, residual, Q.expand(T, -1, -1), B.mT, H, Gp, tol, n_products, probes, k)

