"""Singular value spectra of Jacobian blocks.

For each token's ``J_i`` (``d_out x d_in``) the singular values ``sigma_1 >= sigma_2 >= ...``,
and the stable rank ``||J_i||_F^2 / sigma_1^2``; the top-``k`` singular triplets
``J_i ~= U_i diag(S_i) V_i^T`` either exactly from the full Jacobian (:func:`svd_full`) or
matrix-free from operator products (:func:`topk_svd`), :func:`top_singular` picking by cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .dense import DenseOperator

if TYPE_CHECKING:
    from ..forward.jacobian import JacobianOperator


def singular_values(J: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """All singular values of each ``J[i]`` (``J``: ``[T, d_out, d_in]``), descending, ``[T, min(d_out, d_in)]``.

    Half-precision Jacobians are promoted to float32 (LAPACK has no half SVD).
    """
    work = J if J.dtype in (torch.float32, torch.float64) else J.float()
    return torch.cat([torch.linalg.svdvals(work[i : i + chunk]) for i in range(0, work.shape[0], chunk)])


def stable_rank(sv: torch.Tensor) -> torch.Tensor:
    """``sum sigma^2 / sigma_1^2`` per row of ``sv`` (0 where ``sigma_1 = 0``)."""
    top = sv[..., 0] ** 2
    return torch.where(top > 0, (sv**2).sum(-1) / torch.where(top > 0, top, 1), torch.zeros_like(top))


# ---------------------------------------------------------------------------------------------
# Top-k singular triplets of every J_i, matrix-free.
# ---------------------------------------------------------------------------------------------

#: Power iterations of :func:`topk_svd` unless told. Random-init tiny models have flat spectra
#: (the worst case for subspace iteration); the loop stops early once every triplet has converged.
DEFAULT_ITERS = 60
#: Most vectors one batched product carries (bounds the ``[m, T, d_in]`` direction tensors).
PRODUCT_CHUNK = 512
#: Activation budget of one batched product (long prompts carry fewer vectors than :data:`PRODUCT_CHUNK`).
PRODUCT_BYTES = 1 << 30
#: The shared first sketch ``J_i^T Q_0`` has this many times ``l`` columns (prompts of 4+ tokens).
SKETCH_FACTOR = 4
#: Most blocks of ``l`` vectors the Krylov basis of :func:`topk_svd` holds before a thick restart
#: (memory ``T * d * KRYLOV_BLOCKS * l``).
KRYLOV_BLOCKS = 4
#: Krylov steps after the first that the cost model of :func:`choose_method` assumes (a decaying
#: spectrum converges to 1e-3 in one more step, bench/spectral.py; flat random-init spectra need more).
TYPICAL_ITERS = 1


@dataclass
class TopKSVD:
    """Top-``k`` singular triplets of every token's ``J_i ~= U_i diag(S_i) V_i^T``.

    ``residual[i, j] = max(||J_i v_j - s_j u_j||, ||J_i^T u_j - s_j v_j||) / s_1`` (``s_1`` of token
    ``i``; the absolute value where ``s_1 = 0``), measured with products of the returned vectors.
    ``frobenius_sq[i]`` is ``||J_i||_F^2``: exact on the full path; on the matrix-free path the
    captured part ``||U^T J_i||_F^2`` is exact and the rest a Hutchinson estimate with standard
    error ``frobenius_se`` (0 where exact).
    """

    U: torch.Tensor  # [T, d_out, k]
    S: torch.Tensor  # [T, k], descending
    V: torch.Tensor  # [T, d_in, k]
    residual: torch.Tensor  # [T, k]
    converged: bool  # every residual <= tol
    n_products: int  # operator products (one per vector in a batched VJP or JVP)
    method: str  # "full" or "matrix_free"
    frobenius_sq: torch.Tensor  # [T]
    frobenius_se: torch.Tensor  # [T]

    @property
    def stable_rank(self) -> torch.Tensor:
        """``||J_i||_F^2 / s_1^2`` per token (0 where ``s_1 = 0``)."""
        top = self.S[:, 0] ** 2
        return torch.where(top > 0, self.frobenius_sq / torch.where(top > 0, top, 1), torch.zeros_like(top))

    @property
    def stable_rank_se(self) -> torch.Tensor:
        top = self.S[:, 0] ** 2
        return torch.where(top > 0, self.frobenius_se / torch.where(top > 0, top, 1), torch.zeros_like(top))


def _rel_residual(fwd: torch.Tensor, bwd: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``max(||fwd||, ||bwd||)`` per column, divided by each token's ``s_1`` (``fwd``/``bwd``: ``[T, *, k]``)."""
    res = torch.maximum(torch.linalg.vector_norm(fwd, dim=1), torch.linalg.vector_norm(bwd, dim=1))
    top = S[:, :1]
    return res / torch.where(top > 0, top, torch.ones_like(top))


def product_chunk(op: JacobianOperator | DenseOperator) -> int:
    """Vectors one batched product of ``op`` carries: :data:`PRODUCT_CHUNK`, fewer where their activations
    (about ``T * max(d, d_ff) * 8`` elements per vector, :meth:`JacobianOperator.chunk_size`) would pass
    :data:`PRODUCT_BYTES` — long prompts."""
    if not hasattr(op, "chunk_size"):
        return PRODUCT_CHUNK
    return max(1, min(PRODUCT_CHUNK, op.chunk_size(PRODUCT_BYTES)))


def _shared_rmatvec(op: JacobianOperator, cot: torch.Tensor) -> torch.Tensor:
    """``J_i^T c`` for cotangents ``cot`` ``[m, d_out]`` shared by all tokens -> ``[m, T, d_in]``."""
    step = product_chunk(op)
    parts = [op.rmatvec(cot[i : i + step])[0] for i in range(0, cot.shape[0], step)]
    return torch.cat(parts).to(cot.dtype)


def _per_token_rmatvec(op: JacobianOperator, Q: torch.Tensor) -> torch.Tensor:
    """``J_i^T Q_i`` for per-token blocks ``Q`` ``[T, d_out, m]`` -> ``[T, d_in, m]``.

    One VJP carries all ``T*m`` cotangents; it returns ``J_j^T q`` for every ``j``, of which only
    the diagonal blocks ``j = i`` are kept.
    """
    if hasattr(op, "per_token_rmatvec"):
        return op.per_token_rmatvec(Q)
    T, _, m = Q.shape
    cot = Q.transpose(1, 2).reshape(T * m, -1)  # row i*m + c is Q_i[:, c]
    out = torch.empty(T, op.d_in, m, dtype=Q.dtype, device=Q.device)
    step = product_chunk(op)
    for start in range(0, T * m, step):
        stop = min(start + step, T * m)
        rows = torch.arange(start, stop, device=Q.device)
        gx, _ = op.rmatvec(cot[start:stop])  # [n, T, d_in]
        tok, col = rows // m, rows % m
        out[tok, :, col] = gx[torch.arange(stop - start, device=Q.device), tok].to(Q.dtype)
    return out


def _per_token_matvec(op: JacobianOperator, P: torch.Tensor, mode: str = "reverse",
                      tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``J_i P_i`` for per-token blocks ``P`` ``[T, d_in, m]`` -> ``[T, d_out, m]``.

    ``matvec`` sums over positions, so each direction sits in its own token's slot with zeros elsewhere.
    ``tokens``: ``P`` holds only these tokens' blocks (``[len(tokens), d_in, m]``; the rest need no products).
    """
    if hasattr(op, "per_token_matvec"):
        return op.per_token_matvec(P) if tokens is None else op.J[tokens] @ P
    n, d_in, m = P.shape
    where = torch.arange(n, device=P.device) if tokens is None else tokens.to(P.device)
    dirs = P.transpose(1, 2).reshape(n * m, d_in)
    out = torch.empty(n, op.d_out, m, dtype=P.dtype, device=P.device)
    step = product_chunk(op)
    for start in range(0, n * m, step):
        stop = min(start + step, n * m)
        rows = torch.arange(start, stop, device=P.device)
        tok, col = rows // m, rows % m
        v = torch.zeros(stop - start, op.n_tokens, d_in, dtype=P.dtype, device=P.device)
        v[torch.arange(stop - start, device=P.device), where[tok]] = dirs[start:stop]
        out[tok, :, col] = op.matvec(v, mode=mode).to(P.dtype)
    return out


def _random_complement(B: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random orthonormal directions per token orthogonal to span(``B``) ``[T, d, m]`` -> ``[T, d, n]``.

    Needs ``n <= d - rank(B)`` (there is no room for more).
    """
    T, d, _ = B.shape
    G = torch.randn(T, d, n, generator=gen, dtype=torch.float64).to(B)
    G = G - B @ (B.mT @ G)
    G = G - B @ (B.mT @ G)
    return torch.linalg.qr(G)[0]


def _new_directions(W: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Orthonormal directions of ``W`` ``[T, d, m]`` outside span(``P``), zero columns where there are none.

    Near convergence ``W`` lies almost inside span(``P``) and what is left is rounding noise; Gram-
    Schmidt + QR would normalize that noise into vectors that are not orthogonal to ``P`` (measured
    in float32: the basis lost orthogonality within a few steps and singular values drifted by
    20%). So: project twice, keep the directions whose singular value stands clear of rounding
    (their remaining overlap with ``P`` is then at most ~0.1), project once more and take an
    orthonormal basis of what is left (an SVD, so dropped directions stay exactly zero). Zero
    columns add nothing to a Rayleigh-Ritz step.
    """
    X = W - P @ (P.mT @ W)
    X = X - P @ (P.mT @ X)
    Ux, Sx, _ = torch.linalg.svd(X, full_matrices=False)
    scale = torch.linalg.vector_norm(W, dim=1).amax(-1, keepdim=True)  # [T, 1]
    keep = (Sx > 10 * torch.finfo(W.dtype).eps * scale).to(W.dtype)[:, None, :]
    X = Ux * keep
    X = X - P @ (P.mT @ X)
    Ux, Sx, _ = torch.linalg.svd(X, full_matrices=False)
    return Ux * (Sx > 0.5).to(W.dtype)[:, None, :]


def topk_svd(op: JacobianOperator | DenseOperator, k: int, *, scheme: str = "krylov", **kw: Any) -> TopKSVD:
    """Top-``k`` SVD of every ``J_i`` from operator products by ``scheme`` (a key of :data:`SCHEMES`).

    ``"krylov"`` (default, :func:`topk_svd_krylov`): the shared sketch, shared-basis steps, then per-token
    block Krylov (``shared=`` belongs to it); ``"mixed"`` (opt-in, :func:`~lldd_core.linalg.mixed.topk_svd_mixed`):
    one output basis shared by all tokens, grown by shared products, per-token products only for residual
    checks. ``mixed`` needs 0.53-0.73x the products (bench/spectral.py), but at the analyses' tolerance it is
    less accurate on the smaller singular values (at ``--decay 1.0`` a σ_8 off by 7e-2 of itself — 1.5e-3 of
    σ1, inside its residual bound — against 2e-4 with ``krylov``); at equal accuracy it saves only 10-22%, so it
    is opt-in. ``kw`` goes to the scheme.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if scheme == "mixed" and not _mixed_fits(op):
        scheme = "krylov"  # the shared basis may grow to d_out: T * d^2 images; the per-token scheme keeps T * d * 4l
    return SCHEMES[scheme](op, k, **kw)


#: Largest ``Q^T J_i`` images (``T * d_out * d_in`` entries at worst, bytes) the mixed scheme may hold;
#: longer prompts run :func:`topk_svd_krylov`, whose memory grows like ``T * d * k``.
MIXED_BYTES = 1 << 30


def _mixed_fits(op: JacobianOperator | DenseOperator) -> bool:
    return isinstance(op, DenseOperator) or op.n_tokens * op.d_out * op.d_in * op.y.element_size() <= MIXED_BYTES


def topk_svd_krylov(
    op: JacobianOperator | DenseOperator,
    k: int,
    *,
    oversample: int = 8,
    iters: int = DEFAULT_ITERS,
    tol: float = 1e-6,
    seed: int = 0,
    probes: int = 16,
    products: str = "reverse",
    shared: bool | None = None,
) -> TopKSVD:
    """Top-``k`` SVD of every ``J_i`` by randomized block Krylov iteration, from operator products only.

    With ``l = k + oversample`` (capped at ``min(d_out, d_in)``), per token ``i``:

    1. ``W_i = J_i^T Q_0`` for one random orthonormal ``Q_0`` ``[d_out, l]`` shared by all tokens
       (one VJP of ``l`` cotangents serves every ``i``), together with ``J_i^T G`` for ``probes``
       Gaussian ``G`` (Hutchinson probes for ``||J_i||_F^2``); the basis is ``P_i = orth(W_i)``;
    2. ``Z_i = J_i P_i`` is kept as the basis grows; ``Z_i = U~ S~ Ṽ^T`` gives the Ritz triplets
       ``u = U~``, ``s = S~``, ``v = P_i Ṽ`` of span(``P_i``) (so ``J_i v = s u`` exactly);
    3. ``W_i = J_i^T U~_{:l}``: ``||W_i e_j - s_j v_j||`` is the backward residual of the triplets.
       Stop once it is ``<= tol * s_1`` for all top-``k`` triplets (or after ``iters`` steps);
       otherwise append ``W_i``, orthogonalized against ``P_i``, to the basis (a block Krylov space
       of ``J_i^T J_i``, which converges much faster than plain subspace iteration) and go to 2.
       Past :data:`KRYLOV_BLOCKS` blocks the basis restarts from the top-``l`` Ritz vectors.

    Before step 2's per-token loop, a *shared* phase (``shared=None``: when its memory fits
    :data:`SHARED_BYTES`) runs up to :data:`SHARED_BLOCKS` Rayleigh-Ritz steps on one output-space
    basis for all tokens (see :func:`_shared_phase`): a VJP there serves every token, which often
    converges after one block; otherwise the per-token loop continues from its Ritz vectors.
    Power/Krylov steps of both phases count against ``iters``.

    The reported ``residual`` combines that backward residual with the forward residual
    ``||J_i v - s u||``, read off the products already made (``J_i v = Z_i Ṽ``: zero up to their rounding;
    a fresh product per triplet measured the same and cost ``T*k`` more). ``||J_i||_F^2 =
    ||U~^T J_i||_F^2 + ||(I - U~ U~^T) J_i||_F^2``: the first term is ``||W_i||_F^2``, the second the
    mean of ``||J_i^T (I - U~ U~^T) g||^2`` over the probes, from products already made.
    Products: ``s + probes + 2*T*l*(q + 1)`` for ``q`` Krylov steps (sketch ``s``); ``products`` picks how
    ``J_i v`` is formed (``"reverse"`` over reverse, or ``"forward"`` mode; see :meth:`JacobianOperator.matvec`).
    """
    T, d_out, d_in = op.n_tokens, op.d_out, op.d_in
    if not 1 <= k <= min(d_out, d_in):
        raise ValueError(f"k={k} must lie in [1, {min(d_out, d_in)}]")
    l = min(k + oversample, d_out, d_in)
    dtype, device = op.y.dtype, op.y.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # the shared sketch costs one product per column for all tokens: oversample it, then keep each
    # token's top-l directions (a better start for the same T*l forward products)
    n_sketch = min(d_out, SKETCH_FACTOR * l) if T >= 4 else l
    Q0 = torch.linalg.qr(torch.randn(d_out, n_sketch, generator=gen, dtype=torch.float64))[0]
    G = torch.randn(d_out, probes, generator=gen, dtype=torch.float64)
    gx = _shared_rmatvec(op, torch.cat([Q0.T, G.T]).to(dtype=dtype, device=device))  # [n_sketch + probes, T, d_in]
    W = gx[:n_sketch].permute(1, 2, 0)  # [T, d_in, n_sketch]
    H = gx[n_sketch:].permute(1, 2, 0)  # [T, d_in, probes]
    G = G.to(dtype=dtype, device=device)
    n_products = n_sketch + probes
    P = torch.linalg.qr(W)[0] if n_sketch == l else torch.linalg.svd(W, full_matrices=False)[0][..., :l]
    Z = _per_token_matvec(op, P, products)  # J_i P_i
    n_products += T * l
    use_shared = _shared_fits(op, l) if shared is None else shared
    if use_shared and iters > 0:
        phase = _shared_phase(op, Z, l, k, tol, products, min(SHARED_BLOCKS, iters))
        n_products += phase.n_products
        if phase.done:
            return _finish(phase.U, phase.S, phase.V, phase.residual, phase.basis, phase.images, H, G, tol,
                           n_products, probes, k)
        if phase.V is not None:
            P, Z = phase.V, phase.F  # continue per token from the shared phase's Ritz vectors
            if P.shape[-1] < l:  # the images spanned fewer than l directions (a rank-deficient J_i)
                X = _random_complement(P, l - P.shape[-1], gen)
                P, Z = torch.cat([P, X], dim=-1), torch.cat([Z, _per_token_matvec(op, X, products)], dim=-1)
                n_products += T * X.shape[-1]
        iters -= phase.blocks
    max_basis = max(l, min(d_in, KRYLOV_BLOCKS * l))
    for step in range(iters + 1):
        Ut, St, Vth = torch.linalg.svd(Z, full_matrices=False)
        U, S, V = Ut[..., :l], St[:, :l], P @ Vth.mT[..., :l]  # top-l Ritz triplets of span(P)
        # J_i v = J_i P_i Ṽ = Z_i Ṽ: the forward residual from the products already made (zero up to rounding)
        fwd = Z @ Vth.mT[..., :k] - U[..., :k] * S[:, None, :k]
        W = _per_token_rmatvec(op, U)  # J_i^T U_i: this step's residual and the next Krylov block
        n_products += T * l
        back = W[..., :k] - V[..., :k] * S[:, None, :k]
        if step == iters or bool((_rel_residual(back, back, S[:, :k]) <= tol).all()):
            break
        if P.shape[-1] + l > max_basis:  # thick restart on the Ritz vectors; J V = U S needs no products
            P, Z = V, U * S[:, None, :]
        new = min(l, d_in - P.shape[-1])
        if new <= 0:
            break  # the basis spans the whole input space: the Ritz triplets are exact
        X = _new_directions(W[..., :new], P)
        P = torch.cat([P, X], dim=-1)
        Z = torch.cat([Z, _per_token_matvec(op, X, products)], dim=-1)
        n_products += T * new
    residual = _rel_residual(fwd, back, S[:, :k])
    return _finish(U, S, V, residual, U, W, H, G, tol, n_products, probes, k)


def _finish(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, residual: torch.Tensor, basis: torch.Tensor,
            images: torch.Tensor, H: torch.Tensor, G: torch.Tensor, tol: float, n_products: int, probes: int,
            k: int) -> TopKSVD:
    """Assemble :class:`TopKSVD`; ``||J_i||_F^2`` exact in span(``basis``) (``images = J_i^T basis``),
    Hutchinson (probes ``G``, ``H = J_i^T G``) on its orthogonal complement."""
    captured = images.pow(2).sum((1, 2))
    if probes and basis.shape[-1] < basis.shape[-2]:
        rest = H - images @ (basis.mT @ G)  # J_i^T (I - B B^T) G  [T, d_in, probes]
        per_probe = rest.pow(2).sum(1)  # [T, probes]
        frob = captured + per_probe.mean(1)
        se = per_probe.std(1) / probes**0.5 if probes > 1 else torch.full_like(frob, float("inf"))
    else:
        frob, se = captured, torch.zeros_like(captured)
    return TopKSVD(U=U[..., :k], S=S[:, :k], V=V[..., :k], residual=residual, converged=bool((residual <= tol).all()),
                   n_products=n_products, method="matrix_free", frobenius_sq=frob, frobenius_se=se)


#: Largest ``[T, m, d_in]`` block of shared-basis products (bytes) :func:`topk_svd` keeps; longer
#: prompts skip the shared phase (its memory grows with ``T^2 * l * d``, the per-token one with ``T * l * d``).
SHARED_BYTES = 1 << 28
#: Blocks of the shared left basis before handing over to the per-token Krylov iteration.
SHARED_BLOCKS = 3


@dataclass
class _Shared:
    done: bool
    n_products: int
    blocks: int
    U: torch.Tensor | None
    S: torch.Tensor | None
    V: torch.Tensor | None
    F: torch.Tensor  # J_i V_i
    residual: torch.Tensor | None
    basis: torch.Tensor  # [T, d_out, m] (the shared Q, expanded)
    images: torch.Tensor  # [T, d_in, m] = J_i^T Q


def _shared_fits(op: JacobianOperator | DenseOperator, l: int) -> bool:
    """Whether the shared phase's ``[T, m, d_in]`` products fit :data:`SHARED_BYTES` (and ``op`` is not dense)."""
    T = op.n_tokens
    m = min(SHARED_BLOCKS * T * l, op.d_out)
    return T > 1 and T * m * op.d_in * op.y.element_size() <= SHARED_BYTES and not hasattr(op, "per_token_matvec")


def _shared_phase(op: JacobianOperator | DenseOperator, F: torch.Tensor, l: int, k: int, tol: float, products: str,
                  max_blocks: int) -> _Shared:
    """Rayleigh-Ritz on one left basis ``Q`` shared by all tokens.

    One VJP with cotangents ``Q`` gives ``B_i = Q^T J_i`` for every token at once, so a product buys
    a direction for all ``T`` tokens instead of one. ``Q`` collects every token's forward images
    ``J_i v`` (a block Krylov space of ``J_i J_i^T`` for each token, enriched by the others'); the
    Ritz triplets of token ``i`` are the SVD of ``B_i``: ``u = Q U~``, ``v = Ṽ``. ``J_i^T u = V S``
    holds exactly, so the residual is the forward one, ``||J_i v - s u||``, from fresh products
    that also supply the next block.
    """
    T, d_out, d_in = op.n_tokens, op.d_out, op.d_in
    dtype, device = F.dtype, F.device
    Q = torch.zeros(d_out, 0, dtype=dtype, device=device)
    B = torch.zeros(T, 0, d_in, dtype=dtype, device=device)
    n = blocks = 0
    U = S = V = None
    for _ in range(max_blocks):
        cols = F.permute(1, 0, 2).reshape(d_out, -1)  # every token's images, side by side
        X = cols - Q @ (Q.mT @ cols)
        X = X - Q @ (Q.mT @ X)
        Ux, Sx, _ = torch.linalg.svd(X, full_matrices=False)
        room = d_out - Q.shape[1]
        keep = (Sx > 10 * torch.finfo(dtype).eps * torch.linalg.vector_norm(cols, dim=0).max()).nonzero().flatten()
        Qn = Ux[:, keep[:room]]
        if Qn.shape[1] == 0:
            break
        blocks += 1
        Qn = torch.linalg.qr(Qn - Q @ (Q.mT @ Qn))[0]
        Bn = _shared_rmatvec(op, Qn.mT.contiguous()).permute(1, 0, 2)  # [T, mn, d_in] = Qn^T J_i
        n += Qn.shape[1]
        Q, B = torch.cat([Q, Qn], dim=1), torch.cat([B, Bn], dim=1)
        Ut, St, Vh = torch.linalg.svd(B, full_matrices=False)
        U, S, V = Q @ Ut[..., :l], St[:, :l], Vh[:, :l].mT
        F = _per_token_matvec(op, V[..., :k], products)  # fresh products: the residual of the top k
        n += T * k
        fwd = F - U[..., :k] * S[:, None, :k]
        back = B.mT @ Ut[..., :k] - V[..., :k] * S[:, None, :k]
        residual = _rel_residual(fwd, back, S[:, :k])
        # done only with k triplets: Q can span fewer than k directions when the J_i have rank < k
        if S.shape[1] >= k and bool((residual <= tol).all()):
            return _Shared(True, n, blocks, U, S, V, F, residual, Q.expand(T, -1, -1), B.mT)
        if V.shape[-1] > k:  # the rest of the block's directions for the next step
            F = torch.cat([F, _per_token_matvec(op, V[..., k:], products)], dim=-1)
            n += T * (V.shape[-1] - k)
    return _Shared(False, n, blocks, U, S, V, F, None, Q.expand(T, -1, -1), B.mT)


#: Largest width whose top-k triplets :func:`svd_full` takes from LAPACK's full SVD (O(d^3) per
#: token); above it a block Krylov iteration on the formed matrices is cheaper (8 tokens, top 8,
#: tol 1e-3: 37 ms against 64 ms at d = 256, 77 ms against 392 ms at d = 512).
EXACT_SVD_MAX_D = 128


def svd_full(J: torch.Tensor, k: int, *, tol: float = 1e-6) -> TopKSVD:
    """Top-``k`` triplets of every formed ``J[i]`` (``[T, d_out, d_in]``).

    Up to :data:`EXACT_SVD_MAX_D` by ``torch.linalg.svd`` (exact); wider matrices by
    :func:`topk_svd` on the dense matrices (matrix products are cheap once ``J`` is formed) to
    ``tol``, with an exact Frobenius norm. ``residual`` uses the same formula either way;
    ``n_products`` is 0 here (forming ``J`` by :meth:`JacobianOperator.full` costs ``d_out`` products).
    """
    work = J if J.dtype in (torch.float32, torch.float64) else J.float()
    frob = work.pow(2).sum((1, 2))
    if min(work.shape[1], work.shape[2]) > EXACT_SVD_MAX_D:
        # below ~64 eps the residual is rounding (float32 floor measured ~1.2e-6 relative to s_1)
        out = topk_svd_krylov(DenseOperator(work), k, tol=max(tol, 64 * torch.finfo(work.dtype).eps), probes=0)
        return replace(out, n_products=0, method="full", frobenius_sq=frob, frobenius_se=torch.zeros_like(frob))
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    U, S, V = U[..., :k], S[:, :k], Vh[:, :k].mT
    residual = _rel_residual(work @ V - U * S[:, None, :], work.mT @ U - V * S[:, None, :], S)
    return TopKSVD(U=U, S=S, V=V, residual=residual, converged=bool((residual <= tol).all()),
                   n_products=0, method="full", frobenius_sq=frob, frobenius_se=torch.zeros_like(frob))


def choose_method(d: int, n_tokens: int, k: int, *, oversample: int = 8, iters: int | None = None,
                  full_bytes: int | None = None, element_size: int = 4) -> str:
    """``"full"``, ``"streamed"`` or ``"matrix_free"``, whichever needs the fewest operator products — never
    ``"full"`` when its ``T * d^2`` Jacobian (``element_size`` bytes each) would pass ``full_bytes`` (``None``:
    no limit).

    Cost model: forming every ``J_i`` is one batched VJP of ``d`` (= ``d_out``) cotangents, ``d``
    products; streaming them (:mod:`lldd_core.linalg.streamed`) takes
    :data:`~lldd_core.linalg.streamed.TYPICAL_PASSES` times that at ``O(T d l)`` memory, so it only wins
    where ``full`` does not fit; the matrix-free schemes need about ``s + 16 + 2*n*l*(q + 1)``
    (sketch ``s``, 16 probes, ``l = k + oversample``, ``q`` further steps; default :data:`TYPICAL_ITERS`,
    pass ``iters`` for a worse case) — the opt-in mixed scheme usually fewer (bench/spectral.py). Every
    product costs about one backward pass over the prompt (bench/spectral.py), so ``full`` and
    ``streamed`` grow like ``T`` and ``matrix_free`` like ``T^2``.
    """
    from .streamed import passes_estimate

    q = TYPICAL_ITERS if iters is None else iters
    l = min(k + oversample, d)
    sketch = min(d, SKETCH_FACTOR * l) if n_tokens >= 4 else l
    matrix_free = sketch + 16 + 2 * n_tokens * l * (q + 1)
    fits = full_bytes is None or n_tokens * d * d * element_size <= full_bytes
    if fits:
        return "full" if d <= matrix_free else "matrix_free"
    return "streamed" if passes_estimate(d) < matrix_free else "matrix_free"


def top_singular(op: JacobianOperator, k: int, method: str = "auto", **kw: Any) -> TopKSVD:
    """Top-``k`` triplets of every ``J_i`` by ``method`` (``"auto"``: :func:`choose_method`).

    ``kw`` goes to :func:`topk_svd` (``tol``, ``oversample`` and ``seed`` to the streamed scheme, ``tol`` to
    :func:`svd_full`). The full path reports the
    ``d_out`` products it spent forming ``J``.
    """
    if method == "auto":
        method = choose_method(op.d_out, op.n_tokens, k, oversample=kw.get("oversample", 8))
    if method == "matrix_free":
        return topk_svd(op, k, **kw)
    if method == "streamed":
        from .streamed import topk_svd_streamed

        keep = {key: kw[key] for key in ("tol", "oversample", "seed") if key in kw}
        return topk_svd_streamed(op, k, **keep).svd
    if method != "full":
        raise ValueError(f"unknown method {method!r}")
    out = svd_full(op.full().J, k, **({"tol": kw["tol"]} if "tol" in kw else {}))
    out.n_products = op.d_out
    return out


def fix_signs(svd: TopKSVD, J_x: torch.Tensor) -> TopKSVD:
    """Flip each pair ``(u_j, v_j)`` of token ``i`` so that ``u_j . J_x[i] >= 0`` (``J_x``: ``[T, d_out]``).

    The reference's convention passes the reconstruction ``y`` for every token. Flipping ``u`` and ``v`` together leaves ``U S V^T`` unchanged; ties (``= 0``) keep their sign.
    """
    dots = torch.einsum("tok,to->tk", svd.U, J_x.to(svd.U.dtype))
    sign = torch.where(dots < 0, -1.0, 1.0).to(svd.U.dtype)[:, None, :]
    return replace(svd, U=svd.U * sign, V=svd.V * sign)


def _mixed(op: JacobianOperator | DenseOperator, k: int, **kw: Any) -> TopKSVD:
    from .mixed import topk_svd_mixed  # mixed.py builds on this module's products

    return topk_svd_mixed(op, k, **kw)


#: The matrix-free schemes of :func:`topk_svd`, by name.
SCHEMES: dict[str, Callable[..., TopKSVD]] = {"mixed": _mixed, "krylov": topk_svd_krylov}
