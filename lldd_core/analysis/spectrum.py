"""Spectra of one prompt's detached Jacobian, decoded to tokens.

For every input token ``i`` the top-``k`` triplets ``J_i ~= sum_j s_j u_j v_j^T`` of the detached
Jacobian of the output ``y`` (layer ``K``, final norm applied by default), with

* ``u_j`` (output space) decoded by the unembedding's logits ``W_U u_j``,
* ``v_j`` (input space) decoded by cosine similarity to the input embedding rows,
* signs by the reference's convention: each pair ``(u_j, v_j)`` is flipped so that
  ``u_j . y >= 0`` (``y`` = the reconstruction ``sum_i J_i x_i + b``), the same rule for every
  token; the decodings of the opposite sign are kept too (``*_neg``),
* the stable rank ``||J_i||_F^2 / s_1^2`` (exact on the full path, estimated with a standard error
  on the matrix-free path),
* on the full path, the rows (input space, decoded by cosine) and columns (output space, decoded
  by logits) of largest norm, and every row's and column's norm.

Method: ``"full"`` forms every ``J_i`` (``d_out`` products, ``T * d^2`` memory), ``"matrix_free"`` runs
:func:`~lldd_core.linalg.spectral.topk_svd` (about ``4 T l`` products: short prompts of big models),
``"streamed"`` runs :func:`~lldd_core.linalg.streamed.topk_svd_streamed` (a few times ``d_out`` products, memory
``O(T d l)``: long prompts; exact rows, columns and stable ranks like the full path); ``"auto"`` picks by
:func:`~lldd_core.linalg.spectral.choose_method`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import ranges
from ..errors import InputError, NumericalError
from ..forward.jacobian import JacobianOperator, jacobian_operator
from ..linalg.decoding import decode_input, decode_output
from ..linalg.spectral import TopKSVD, choose_method, fix_signs, svd_full, topk_svd
from ..linalg.streamed import Extremes, StreamedSVD, topk_svd_streamed
from ..models.loading import ModelHandle
from ..models.placement import tensor_of
from ..progress import ProgressFn
from ..store.results import PromptStamp, result_type
from .jacobian import check_size

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ANALYSIS = "spectrum"
METHODS = ("auto", "full", "matrix_free", "streamed")
#: Residual tolerance (relative to each token's s_1) of the analyses. Singular values are then
#: accurate to about tol^2 / gap (Rayleigh-Ritz; bench/spectral.py measured 1e-5..2e-5 relative at
#: d = 2048), vectors to about tol / gap, below what a plot or a top-token list resolves. The
#: achieved residual is reported with every result.
DEFAULT_TOL = 1e-2
#: Oversampling of the matrix-free path (l = k + this); with the loose tolerance above, 4 needed
#: the fewest products at d = 2048 (bench/spectral.py).
DEFAULT_OVERSAMPLE = 4
#: Power steps at most on the matrix-free path (decaying spectra converge in a few).
DEFAULT_MAX_ITERS = 30
#: Rows and columns of largest norm decoded per token.
N_ROWS = 8
#: Largest full Jacobian (``T * d^2`` entries, bytes) that ``method="auto"`` forms; past it (long prompts) auto
#: streams (or goes matrix-free, whichever needs fewer products), whose memory grows like ``T * d * k``.
#: ``method="full"`` may go up to ``LLDD_MAX_JACOBIAN_GB``.
AUTO_FULL_BYTES = 1 << 30


def auto_method(d: int, n_tokens: int, k: int, dtype: torch.dtype, oversample: int = DEFAULT_OVERSAMPLE) -> str:
    """What ``method="auto"`` runs: :func:`~lldd_core.linalg.spectral.choose_method` by cost, ``full`` only
    where its Jacobian fits :data:`AUTO_FULL_BYTES` and ``LLDD_MAX_JACOBIAN_GB`` (else ``streamed`` or
    ``matrix_free``)."""
    from .jacobian import max_jacobian_bytes

    size = torch.empty((), dtype=dtype).element_size()
    return choose_method(d, n_tokens, k, oversample=oversample, full_bytes=min(AUTO_FULL_BYTES, max_jacobian_bytes()),
                         element_size=size)


@result_type
class SpectrumResult(PromptStamp):
    """Top-``k`` singular triplets of every token's Jacobian ``J_i`` at one layer, with their decodings.

    ``T`` tokens, ``k`` triplets, ``n`` decoded tokens each, ``r`` rows / columns shown; the summary
    lists them per token (:meth:`summary_extra`) instead of the token lists.
    """

    SUMMARY_SKIP = (*PromptStamp.SUMMARY_SKIP, "u_tokens", "u_tokens_neg", "v_tokens", "v_tokens_neg", "row_tokens",
                    "col_tokens")

    layer: int
    n_layers: int
    final_norm: bool
    k: int
    n_decode: int
    method: str  # "full", "matrix_free" or "streamed"
    converged: bool
    max_residual: float
    n_products: int
    elapsed_s: float
    next_token: str  # argmax of W_U y: the greedy next token (logit lens when layer < L)
    u_tokens: list  # [T][k][n] top tokens of +u_j by logits
    u_tokens_neg: list  # the same for -u_j
    v_tokens: list  # [T][k][n] nearest input embeddings to +v_j (cosine)
    v_tokens_neg: list
    row_tokens: list  # [T][r][n] rows of largest norm (input space, cosine); [] when matrix-free
    col_tokens: list  # [T][r][n] columns of largest norm (output space, logits); [] when matrix-free
    singular_values: np.ndarray  # [T, k]
    residual: np.ndarray  # [T, k] relative to s_1
    stable_rank: np.ndarray  # [T]
    stable_rank_se: np.ndarray  # [T] (0 where exact)
    U: np.ndarray  # [T, d_out, k] signs fixed
    V: np.ndarray  # [T, d_in, k]
    u_scores: np.ndarray  # [T, k, n] logits of the decoded tokens
    v_scores: np.ndarray  # [T, k, n] cosines
    row_norms: np.ndarray  # [T, d_out] (empty when matrix-free)
    col_norms: np.ndarray  # [T, d_in]
    top_rows: np.ndarray  # [T, r] row indices, largest norm first
    top_cols: np.ndarray  # [T, r]
    #: The input positions (token indices) the rows above belong to; empty: every token, in order
    #: (``T`` above is then ``len(positions)``).
    positions: list = dataclasses.field(default_factory=list)
    #: Passes over every ``J_i``'s rows (``method == "streamed"``; 0 otherwise).
    passes: int = 0

    @property
    def rows(self) -> list[int]:
        """Token index of each row of the arrays."""
        return list(self.positions) if self.positions else list(range(len(self.tokens)))

    @property
    def has_rows(self) -> bool:
        return self.row_norms.size > 0

    def validate(self) -> None:
        """``k`` triplets per token, finite singular values (the cache checks before storing)."""
        T, k = len(self.rows), self.k
        if self.singular_values.shape != (T, k) or self.residual.shape != (T, k):
            raise ValueError(f"singular_values has shape {self.singular_values.shape}, expected ({T}, {k})")
        for name in ("U", "V"):
            m = getattr(self, name)
            if m.ndim != 3 or m.shape[0] != T or m.shape[2] != k:
                raise ValueError(f"{name} has shape {m.shape}, expected ({T}, ·, {k})")
        if not np.isfinite(self.singular_values).all():
            raise ValueError("non-finite singular values")

    def summary_extra(self) -> dict:
        """``per_token`` for the CLI: singular values, decoded tokens of U and V, stable rank."""
        per_token = []
        for i, pos in enumerate(self.rows):
            entry = {
                "position": pos,
                "token": self.tokens[pos],
                "singular_values": self.singular_values[i].tolist(),
                "stable_rank": float(self.stable_rank[i]),
                "u_tokens": self.u_tokens[i],
                "v_tokens": self.v_tokens[i],
                "residual": self.residual[i].tolist(),
            }
            if self.method == "matrix_free":
                entry["stable_rank_se"] = float(self.stable_rank_se[i])
            if self.has_rows:
                entry["row_tokens"] = self.row_tokens[i]
                entry["col_tokens"] = self.col_tokens[i]
            per_token.append(entry)
        return {"per_token": per_token}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def run_svd(op: JacobianOperator, k: int, method: str, *, tol: float = DEFAULT_TOL, iters: int = DEFAULT_MAX_ITERS,
            oversample: int = DEFAULT_OVERSAMPLE, full_J: torch.Tensor | None = None,
            progress: ProgressFn | None = None) -> TopKSVD:
    """Top-``k`` triplets of every ``J_i`` by ``method`` (``"auto"`` picks by cost), signs fixed by ``y``."""
    if method == "auto":
        method = auto_method(op.d_out, op.n_tokens, k, op.y.dtype, oversample)
    if method == "streamed":
        return streamed_svd(op, k, tol=tol, oversample=oversample, progress=progress).svd
    if method == "full":
        J = op.full().J if full_J is None else full_J
        svd = svd_full(J, k, tol=tol)
        svd.n_products = op.d_out
    elif method == "matrix_free":
        svd = topk_svd(op, k, tol=tol, iters=iters, oversample=oversample)
    else:
        raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    return _signed(svd, op)


def _signed(svd: TopKSVD, op: JacobianOperator) -> TopKSVD:
    return fix_signs(svd, op.y.detach().expand(op.n_tokens, -1))


def streamed_svd(op: JacobianOperator, k: int, *, tol: float = DEFAULT_TOL, oversample: int = DEFAULT_OVERSAMPLE,
                 progress: ProgressFn | None = None) -> StreamedSVD:
    """:func:`~lldd_core.linalg.streamed.topk_svd_streamed` with the signs fixed by ``y``."""
    out = topk_svd_streamed(op, k, tol=tol, oversample=oversample, progress=progress)
    return dataclasses.replace(out, svd=_signed(out.svd, op))


def decode_triplets(svd: TopKSVD, W_U: torch.Tensor, W_E: torch.Tensor, n: int,
                    tokenizer: PreTrainedTokenizerBase, logit_scale: float = 1.0) -> dict:
    """Decoded tokens of ``±u`` (logits ``c W_U u``, ``c`` the family's logit multiplier) and ``±v`` (cosine),
    ``[T][k][n]`` lists, and their scores."""
    U = svd.U.mT if logit_scale == 1.0 else svd.U.mT * logit_scale  # [T, k, d]
    V = svd.V.mT
    up, un = decode_output(U, W_U, n), decode_output(-U, W_U, n)
    vp, vn = decode_input(V, W_E, n), decode_input(-V, W_E, n)
    return {
        "u_tokens": up.strings(tokenizer), "u_tokens_neg": un.strings(tokenizer),
        "v_tokens": vp.strings(tokenizer), "v_tokens_neg": vn.strings(tokenizer),
        "u_scores": _np(up.scores), "v_scores": _np(vp.scores),
    }


def extremes(e: Extremes, W_U: torch.Tensor, W_E: torch.Tensor, n: int, tokenizer: PreTrainedTokenizerBase) -> dict:
    """The result fields of ``e``: rows decoded by cosine to the input embeddings, columns by logits."""
    return {
        "row_tokens": decode_input(e.row_vectors, W_E, n).strings(tokenizer),
        "col_tokens": decode_output(e.col_vectors, W_U, n).strings(tokenizer) if e.col_vectors.shape[1] else [],
        "row_norms": _np(e.row_norms), "col_norms": _np(e.col_norms),
        "top_rows": e.top_rows.cpu().numpy(), "top_cols": e.top_cols.cpu().numpy(),
    }


def embedding_matrices(handle: ModelHandle) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_U, W_E)``: unembedding and input embedding weights, ``[V, d]`` each."""
    # tensor_of: an offloaded embedding is on the meta device outside its call
    W_U = tensor_of(handle.adapter.unembedding(handle.model)).detach()
    W_E = tensor_of(handle.adapter.input_embedding(handle.model)).detach()
    return W_U, W_E


def analyze_spectrum(
    handle: ModelHandle,
    input_ids: list[int],
    *,
    layer: int | None = None,
    final_norm: bool = True,
    k: int = 8,
    n_decode: int = 8,
    method: str = "auto",
    tol: float = DEFAULT_TOL,
    positions: tuple[int, ...] | None = None,
    progress: ProgressFn | None = None,
) -> SpectrumResult:
    """Top-``k`` spectra and token decodings of every ``J_i`` for ``input_ids`` (see the module doc).

    ``positions``: only these input positions' ``J_i`` (sorted token indices ``0..T-1``; ``None``: all).
    """
    report = progress or (lambda frac, msg: None)
    layer = handle.n_layers if layer is None else ranges.LAYER.check(layer, hi=handle.n_layers)
    d = handle.info.d_model
    k, n_decode = ranges.TOP_K.check(k, hi=d), ranges.DECODE.check(n_decode)
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    n_rows = len(input_ids) if positions is None else len(positions)
    chosen = auto_method(d, n_rows, k, handle.dtype) if method == "auto" else method
    if chosen == "full":
        check_size(n_rows, d, handle.dtype)
    t0 = time.perf_counter()
    report(0.0, "Detached forward pass")
    ids = torch.tensor(input_ids, dtype=torch.long)
    op = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=final_norm).at(
        None if positions is None else list(positions))
    J = stream = None
    if chosen == "full":
        J = op.full(progress=lambda f, m: report(0.05 + 0.6 * f, m)).J
    if chosen == "streamed":
        stream = streamed_svd(op, k, tol=tol, progress=lambda f, m: report(0.05 + 0.8 * f, f"Streamed SVD, {m}"))
        svd = stream.svd
    else:
        report(0.65, "Top singular vectors" if chosen == "full" else "Matrix-free top-k SVD")
        svd = run_svd(op, k, chosen, tol=tol, full_J=J)
    if not (bool(torch.isfinite(svd.S).all()) and bool(torch.isfinite(op.y).all())):
        raise NumericalError(
            f"The model produced NaN or Inf in {handle.spec.dtype}: use float32 or bfloat16 "
            "(float16 overflows easily), or a shorter prompt."
        )
    report(0.85, "Decoding singular vectors")
    W_U, W_E = embedding_matrices(handle)
    tok = handle.info.tokenizer
    dec = decode_triplets(svd, W_U, W_E, n_decode, tok, handle.adapter.logit_multiplier(handle.model))
    next_id = int(torch.argmax(W_U.to(op.y.dtype) @ op.y.detach()))
    rows: dict = {"row_tokens": [], "col_tokens": [], "row_norms": np.zeros((0,)), "col_norms": np.zeros((0,)),
                  "top_rows": np.zeros((0,), dtype=np.int64), "top_cols": np.zeros((0,), dtype=np.int64)}
    if J is not None:
        rows = extremes(Extremes.of(J.detach(), N_ROWS), W_U, W_E, n_decode, tok)
    elif stream is not None:
        rows = extremes(stream.extremes, W_U, W_E, n_decode, tok)
    result = SpectrumResult(
        **handle.result_fields(input_ids),
        layer=int(layer),
        n_layers=handle.n_layers,
        final_norm=bool(final_norm),
        k=int(k),
        n_decode=int(n_decode),
        method=svd.method,
        converged=bool(svd.converged),
        max_residual=float(svd.residual.max()),
        n_products=int(svd.n_products),
        elapsed_s=time.perf_counter() - t0,
        next_token=tok.decode([next_id]),
        singular_values=_np(svd.S),
        residual=_np(svd.residual),
        stable_rank=_np(svd.stable_rank),
        stable_rank_se=_np(svd.stable_rank_se),
        U=_np(svd.U),
        V=_np(svd.V),
        **dec,
        **rows,
        positions=[] if positions is None else [int(p) for p in positions],
        passes=0 if stream is None else int(stream.passes),
    )
    report(1.0, "Done")
    return result
