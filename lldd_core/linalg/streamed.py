"""Top-``k`` spectra of every ``J_i`` from streamed row blocks: memory independent of ``T * d_out * d_in``.

One VJP with the cotangent ``e_r`` (row ``r`` of the identity) returns row ``r`` of *every* token's
``J_i`` at once, so ``d_out`` VJPs — what forming the full Jacobian costs — visit every entry of every
``J_i``. A *pass* runs them in blocks of ``c`` rows ``R_i = J_i[r0:r1, :]`` (``[c, T, d_in]`` for all
tokens, the only piece of ``J`` alive at a time) and, for a per-token orthonormal basis ``K_i``
(``[d_in, m]``), accumulates

* ``Y_i = J_i K_i`` row block by row block (``Y_i[r0:r1] = R_i K_i``), and
* ``X_i = J_i^T J_i K_i = sum over blocks R_i^T (R_i K_i)`` (``J_i^T J_i`` is the sum of its rows' outer
  products),

so one pass is one step of block subspace iteration on ``J_i^T J_i`` *and* everything a Rayleigh-Ritz
step and its residuals need: with ``Y_i = Ũ Σ̃ W̃^T``, the Ritz triplets ``u = Ũ``, ``s = Σ̃``,
``v = K_i W̃`` satisfy ``J_i v = Y_i W̃ = s u`` (zero forward residual up to rounding) and
``J_i^T u = X_i W̃ Σ̃^{-1}`` (the backward residual ``||J_i^T u - s v||`` is exact, no extra products).
The next basis is the thick restart ``orth([v_{1..p}, J_i^T J_i v_{1..p}])`` (a block Krylov space of
``J_i^T J_i``), the first one a shared random ``Ω`` (``[d_in, m]``). The same pass gives, exactly, what
the full path reads off the formed matrices: ``||J_i||_F^2``, every row's and column's norm, the rows of
largest norm (a running top-``r`` over blocks) and, from the second pass, the columns of largest norm.

Cost: ``passes * d_out`` products, each one backward pass over the ``T``-token graph: linear in ``T``
(the per-token matrix-free Krylov of :func:`~lldd_core.linalg.spectral.topk_svd` needs ``~4 T l``
products of the same cost, quadratic in ``T``). Memory: the graph, one row block, and ``O(T * d * m)``
for ``K``, ``Y``, ``X`` — never ``T * d_out * d_in``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..progress import ProgressFn
from .spectral import TopKSVD, _new_directions

if TYPE_CHECKING:
    from ..forward.jacobian import JacobianOperator, PositionView
    from .dense import DenseOperator

    Operator = JacobianOperator | PositionView | DenseOperator

#: Bytes of one row block ``[c, T, d_in]`` (the VJP's own activations are bounded by the operator's
#: :meth:`~lldd_core.forward.jacobian.JacobianOperator.chunk_size` besides).
BLOCK_BYTES = 1 << 27
#: Activation budget of one batched VJP of a pass (more cotangents per call than the CPU's cache-sized
#: default: at long prompts one cotangent's activations pass the cache anyway).
VJP_BYTES = 1 << 28
#: On an accelerator both budgets are this many times larger (wider batches keep it busy; its memory is larger).
ACCELERATOR_FACTOR = 8
#: Passes at most (each ``d_out`` products); the first has no Ritz quality to speak of, the second
#: usually converges to the analyses' tolerance on decaying spectra.
DEFAULT_PASSES = 6
#: Passes the cost model of :func:`passes_estimate` assumes.
TYPICAL_PASSES = 2
#: Rows (and columns) of largest norm kept per token.
N_EXTREMES = 8
#: Width of the first pass's random sketch ``Ω``, in blocks of ``l``. Matrix products cost little next to the
#: VJPs, so the basis is wide: on power-law test matrices (d = 300, top 8, l = 12, tol 1e-2) 8/4/4 reached
#: 5-10x smaller errors of σ than 4/3/3 in the same passes (2 at decay 1.0, 3 at 0.5), for 8l instead of 6l
#: columns of memory.
SKETCH_BLOCKS = 8
#: Ritz vectors carried into the next pass, and new Krylov directions ``J_i^T J_i v`` added, in blocks of ``l``.
RITZ_BLOCKS = 4
GROW_BLOCKS = 4


@dataclass
class Extremes:
    """Every ``J_i``'s row and column norms and its ``r`` rows and columns of largest norm (largest first)."""

    row_norms: torch.Tensor  # [T, d_out]: rows J_i[r, :] live in input space
    col_norms: torch.Tensor  # [T, d_in]: columns J_i[:, c] live in output space
    top_rows: torch.Tensor  # [T, r]
    top_cols: torch.Tensor  # [T, r]
    row_vectors: torch.Tensor  # [T, r, d_in]
    col_vectors: torch.Tensor  # [T, r, d_out]

    @classmethod
    def of(cls, J: torch.Tensor, r: int = N_EXTREMES) -> Extremes:
        """From formed matrices ``J`` ``[T, d_out, d_in]``."""
        row_norms, col_norms = torch.linalg.vector_norm(J, dim=2), torch.linalg.vector_norm(J, dim=1)
        r = min(r, J.shape[1], J.shape[2])
        top_rows, top_cols = torch.topk(row_norms, r, dim=1).indices, torch.topk(col_norms, r, dim=1).indices
        tok = torch.arange(J.shape[0])[:, None]
        return cls(row_norms, col_norms, top_rows, top_cols, J[tok, top_rows], J.transpose(1, 2)[tok, top_cols])


@dataclass
class StreamedSVD:
    """A :class:`~lldd_core.linalg.spectral.TopKSVD` (``method="streamed"``, exact Frobenius norms) and the
    exact row and column features of every ``J_i`` that the full path reads off the formed matrices."""

    svd: TopKSVD
    passes: int
    extremes: Extremes  # no columns (r = 0) after a single pass
    bias: torch.Tensor  # [d_out]: b = dy/ds, from the same VJPs


def block_rows(op: Operator, budget: int | None = None) -> int:
    """Rows per block: a ``[c, T, d_in]`` block within ``budget`` bytes (default :data:`BLOCK_BYTES`) and the VJP
    within :data:`VJP_BYTES` (both :data:`ACCELERATOR_FACTOR` times larger off the CPU)."""
    scale = 1 if op.y.device.type == "cpu" else ACCELERATOR_FACTOR
    per_row = op.n_tokens * op.d_in * op.y.element_size()
    c = max(1, min(op.d_out, (budget or BLOCK_BYTES * scale) // max(per_row, 1)))
    if hasattr(op, "chunk_size"):
        c = min(c, op.chunk_size(VJP_BYTES * scale))
    return int(c)


def row_blocks(op: Operator, rows: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``(r0, r1, R, b)`` over the output rows: ``R[i] = J_i[r0:r1, :]`` (``[T, c, d_in]``, contiguous, in the work
    dtype: float32 for half-precision models), ``b`` the bias rows."""
    dtype, device = _work_dtype(op.y.dtype), op.y.device
    for r0 in range(0, op.d_out, rows):
        r1 = min(r0 + rows, op.d_out)
        if hasattr(op, "J"):  # formed matrices: a slice, no products
            yield r0, r1, op.J[:, r0:r1].to(dtype), torch.zeros(r1 - r0, dtype=dtype, device=device)
            continue
        eye = torch.zeros(r1 - r0, op.d_out, dtype=op.y.dtype, device=device)
        eye[torch.arange(r1 - r0), torch.arange(r0, r1)] = 1
        gx, gs = op.rmatvec(eye)  # [c, T, d_in]
        yield r0, r1, gx.detach().transpose(0, 1).to(dtype).contiguous(), gs.detach().to(dtype)


#: ``(r0, r1, R, b)``: rows ``r0:r1`` of every ``J_i`` (``R``: ``[T, c, d_in]``) and of the bias ``b``.
BlockFn = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def stream_rows(op: Operator, on_block: BlockFn, rows: int | None = None, progress: ProgressFn | None = None) -> int:
    """One pass over every ``J_i``'s rows, ``on_block`` for each block (``R`` ``[T, c, d_in]``); returns the products."""
    for r0, r1, R, b in row_blocks(op, rows or block_rows(op)):
        on_block(r0, r1, R, b)
        if progress is not None:
            progress(r1 / op.d_out, f"rows {r1}/{op.d_out}")
    return op.d_out


def passes_estimate(d_out: int, passes: int = TYPICAL_PASSES) -> int:
    """Products of :func:`topk_svd_streamed` at ``passes`` passes (``d_out`` each, whatever ``T``)."""
    return passes * d_out


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def topk_svd_streamed(
    op: Operator,
    k: int,
    *,
    tol: float = 1e-2,
    oversample: int = 8,
    max_passes: int = DEFAULT_PASSES,
    seed: int = 0,
    rows: int | None = None,
    n_extremes: int = N_EXTREMES,
    on_block: BlockFn | None = None,
    progress: ProgressFn | None = None,
) -> StreamedSVD:
    """Top-``k`` triplets of every ``J_i`` by streamed passes over its rows (see the module doc).

    With ``l = k + oversample``, the first pass sketches with :data:`SKETCH_BLOCKS` ``* l`` random
    directions; later passes carry the top :data:`RITZ_BLOCKS` ``* l`` Ritz vectors and
    :data:`GROW_BLOCKS` ``* l`` new directions of their images under ``J_i^T J_i``. Stops when every top-``k`` residual ``max(||J_i v - s u||, ||J_i^T u - s v||) / s_1``
    is at most ``tol`` (not before pass 2 unless ``n_extremes`` is 0: the columns of largest norm are
    gathered in pass 2), or after ``max_passes``. ``rows``: rows per block (default :func:`block_rows`).
    ``on_block(r0, r1, R, b)`` sees every block of the first pass (``R``: ``[T, c, d_in]``, ``b``: the bias rows),
    for anything else one pass over the rows can compute (e.g. the reconstruction ``sum_i J_i x_i + b``).
    """
    T, d_out, d_in = op.n_tokens, op.d_out, op.d_in
    if not 1 <= k <= min(d_out, d_in):
        raise ValueError(f"k={k} must lie in [1, {min(d_out, d_in)}]")
    if max_passes < 1:
        raise ValueError("max_passes must be at least 1")
    report = progress or (lambda frac, msg: None)
    dtype, device = _work_dtype(op.y.dtype), op.y.device
    l = min(k + oversample, d_out, d_in)
    m = min(SKETCH_BLOCKS * l, d_in)
    rows = rows or block_rows(op)
    r = min(n_extremes, d_out, d_in)
    min_passes = min(2 if r > 0 else 1, max_passes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.linalg.qr(torch.randn(d_in, m, generator=gen, dtype=torch.float64))[0].to(dtype=dtype, device=device)
    K = omega.expand(T, d_in, m)
    row_norms = torch.empty(T, d_out, dtype=dtype, device=device)
    col_sq = torch.zeros(T, d_in, dtype=dtype, device=device)
    bias = torch.empty(d_out, dtype=dtype, device=device)
    best = torch.full((T, r), -1.0, dtype=dtype, device=device)  # running top-r row norms, their rows and vectors
    best_idx = torch.zeros(T, r, dtype=torch.long, device=device)
    best_vec = torch.zeros(T, r, d_in, dtype=dtype, device=device)
    top_cols = col_vectors = None
    n_products = passes = 0
    U = S = V = residual = None
    tok = torch.arange(T, device=device)[:, None]
    for passes in range(1, max_passes + 1):
        Y = torch.empty(T, d_out, K.shape[-1], dtype=dtype, device=device)
        X = torch.zeros(T, d_in, K.shape[-1], dtype=dtype, device=device)
        first = passes == 1
        if passes == 2:
            col_norms = col_sq.sqrt()
            top_cols = torch.topk(col_norms, r, dim=1).indices  # [T, r]
            col_vectors = torch.empty(T, r, d_out, dtype=dtype, device=device)
        for r0, r1, Rt, b in row_blocks(op, rows):  # Rt: [T, c, d_in]
            Yc = Rt @ K  # [T, c, m]
            Y[:, r0:r1] = Yc
            X += Rt.mT @ Yc
            if first:
                norms = torch.linalg.vector_norm(Rt, dim=2)  # [T, c]
                row_norms[:, r0:r1] = norms
                col_sq += torch.einsum("tcd,tcd->td", Rt, Rt)
                bias[r0:r1] = b
                if on_block is not None:
                    on_block(r0, r1, Rt, b)
                cand = torch.cat([best, norms], dim=1)
                top = torch.topk(cand, r, dim=1).indices
                from_block = top >= r
                best_vec = torch.where(from_block[..., None], Rt[tok, (top - r).clamp(min=0)],
                                       best_vec[tok, top.clamp(max=r - 1)])
                best_idx = torch.where(from_block, top - r + r0, best_idx[tok, top.clamp(max=r - 1)])
                best = cand[tok, top]
            elif passes == 2:  # the columns of largest norm, now that pass 1 gave every column's norm
                col_vectors[:, :, r0:r1] = torch.gather(Rt, 2, top_cols[:, None, :].expand(-1, r1 - r0, -1)).mT
            n_products += r1 - r0
            # monotone without knowing how many passes convergence takes: half of what is left per pass
            report(1 - 0.5 ** (passes - 1) * (1 - 0.5 * r1 / d_out), f"pass {passes}: rows {r1}/{d_out}")
        # Rayleigh-Ritz on span(K): J_i K = Y = Ũ Σ̃ W̃^T, so J_i (K W̃) = Ũ Σ̃ and J_i^T Ũ = X W̃ Σ̃^{-1};
        # every [T, d, m] array is dropped as soon as it is used (they dominate the memory)
        Ut, St, Wh = torch.linalg.svd(Y, full_matrices=False)
        n = min(RITZ_BLOCKS * l, St.shape[-1])
        W, S = Wh.mT[..., :n], St[:, :n]
        del Wh, St
        fwd = torch.linalg.vector_norm(Y @ W[..., :k] - Ut[..., :k] * S[:, None, :k], dim=1)  # ||J_i v - s u||
        U = Ut[..., :k].clone()
        del Y, Ut
        V = K @ W
        K = None  # the next basis is built below
        XW = X @ W  # J_i^T J_i v = s J_i^T u
        del X
        safe = torch.where(S[:, :k] > 0, S[:, :k], torch.ones_like(S[:, :k]))
        back = torch.linalg.vector_norm(XW[..., :k] / safe[:, None, :] - V[..., :k] * S[:, None, :k], dim=1)
        back = torch.where(S[:, :k] > 0, back, torch.zeros_like(back))  # ||J_i^T u - s v||
        top = S[:, :1]
        residual = torch.maximum(fwd, back) / torch.where(top > 0, top, torch.ones_like(top))
        if (passes >= min_passes and bool((residual <= tol).all())) or passes == max_passes:
            break
        # thick restart: the top Ritz vectors and new directions of their images under J_i^T J_i (a Krylov block)
        grown = _new_directions(XW[..., :GROW_BLOCKS * l], V)
        del XW
        K = torch.cat([V, grown], dim=-1)
        del grown
    frob = row_norms.pow(2).sum(1)
    col_norms = col_sq.sqrt()
    if col_vectors is None:  # a single pass: the columns of largest norm were not gathered
        top_cols = torch.zeros(T, 0, dtype=torch.long, device=device)
        col_vectors = torch.zeros(T, 0, d_out, dtype=dtype, device=device)
    svd = TopKSVD(U=U, S=S[:, :k], V=V[..., :k], residual=residual, converged=bool((residual <= tol).all()),
                  n_products=n_products, method="streamed", frobenius_sq=frob, frobenius_se=torch.zeros_like(frob))
    return StreamedSVD(svd=svd, passes=passes, bias=bias,
                       extremes=Extremes(row_norms, col_norms, best_idx, top_cols, best_vec, col_vectors))
