"""Depth views of one prompt: spectra and decodings of every block's detached Jacobians.

For each depth ``k`` (``1..L``: the view writes into ``x_k``, :mod:`lldd_core.layering`) and site (see
:mod:`lldd_core.forward.views`: ``cumulative`` ``x_0 -> x_k``, ``block`` ``x_{k-1} -> x_k`` of block ``k - 1``,
the ``attention`` and ``mlp`` terms block ``k - 1`` adds, as functions of ``x_0``), and each input token ``i``:

* the top-``k`` singular values of ``J_i`` and the stable rank ``||J_i||_F^2 / s_1^2``;
* the decoded tokens of the top singular vectors (``u`` by the unembedding's logits, ``v`` by
  cosine to the input embeddings), signs fixed by ``u . y >= 0`` with ``y`` that view's output;
* the *emergence* measure: ``||U_L^T u_1||``, how much of the view's top output direction lies in
  the span of the final layer's top-``k`` output directions (``U_L``: cumulative view at ``L``,
  same token). It is 1 where the final computation has already emerged.

With ``lens=True`` every view's output passes through the final norm (the reference's convention),
so its ``u`` lives where the unembedding reads (logit-lens decoding); ``lens=False`` analyses the
raw stream or term and decodes ``W_U u`` directly.

One recorded forward pass serves every view (:func:`~lldd_core.forward.views.record_views`); each view's
VJPs traverse only the blocks it spans.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError, NumericalError
from ..forward.views import SITES, record_views
from ..layering import BLOCK_SITES
from ..linalg.decoding import decode_input, decode_output
from ..models.loading import ModelHandle
from ..progress import ProgressFn
from ..store.results import PromptStamp, result_type
from .jacobian import check_size
from .spectrum import DEFAULT_TOL, METHODS, _np, auto_method, embedding_matrices, run_svd

ANALYSIS = "layers"
#: Singular vectors per cell whose decodings are kept (the emergence table shows the first).
N_VECTORS = 3


@result_type
class LayersResult(PromptStamp):
    """Every ``(site, layer)`` view of one prompt: spectra, stable ranks, decodings, emergence (module doc).

    ``S`` sites, ``L`` layers, ``T`` tokens, ``k`` singular triplets; the summary lists, per layer and
    site, the stable ranks, singular values, top decodings and projections instead of the token lists.
    """

    SUMMARY_SKIP = (*PromptStamp.SUMMARY_SKIP, "u_tokens", "u_tokens_neg", "v_tokens")

    n_layers: int
    sites: list
    lens: bool
    k: int
    n_decode: int
    method: str
    converged: bool
    max_residual: float
    n_products: int
    elapsed_s: float
    u_tokens: list  # [S][L][T][j][n], j < N_VECTORS: top tokens of +u_j (logits)
    u_tokens_neg: list  # the same for -u_j
    v_tokens: list  # [S][L][T][j][n]: nearest input embeddings of +v_j (cosine)
    singular_values: np.ndarray  # [S, L, T, k]
    stable_rank: np.ndarray  # [S, L, T]
    stable_rank_se: np.ndarray  # [S, L, T] (0 where exact)
    projection: np.ndarray  # [S, L, T] ||U_L^T u_1||

    def site_index(self, site: str) -> int:
        return self.sites.index(site)

    def summary_extra(self) -> dict:
        """``layers``: one entry per depth (CLI JSON): ``layer`` ``l`` (``1..L``), the stream ``x_l`` every view
        of the entry writes into (the cumulative view ``x_0 → x_l``); ``of_block`` ``b = l - 1``, the block
        whose single-block (``x_b → x_{b+1}``), attention and MLP views these are; then per site the stable
        rank, top singular values, top decodings and projection of every token."""
        layers = []
        for li in range(self.n_layers):
            entry: dict = {"layer": li + 1, "of_block": li}
            for si, site in enumerate(self.sites):
                entry[site] = {
                    "stable_rank": self.stable_rank[si, li].tolist(),
                    "singular_values": self.singular_values[si, li].tolist(),
                    "top_u_tokens": [cell[0] for cell in self.u_tokens[si][li]],
                    "top_v_tokens": [cell[0] for cell in self.v_tokens[si][li]],
                    "projection_on_final": self.projection[si, li].tolist(),
                }
            layers.append(entry)
        return {"layers": layers}


def analyze_layers(
    handle: ModelHandle,
    input_ids: list[int],
    *,
    sites: Sequence[str] = SITES,
    k: int = 8,
    n_decode: int = 5,
    lens: bool = True,
    method: str = "auto",
    tol: float = DEFAULT_TOL,
    progress: ProgressFn | None = None,
) -> LayersResult:
    """Spectra, stable ranks, decodings and emergence of every ``(site, layer)`` view (module doc)."""
    report = progress or (lambda frac, msg: None)
    sites = list(dict.fromkeys(sites))
    if not sites or set(sites) - set(SITES):
        raise InputError(f"Sites must be chosen from {', '.join(SITES)}; got {sites}.")
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    d = handle.info.d_model
    if not 1 <= k <= d:
        raise InputError(f"k must be between 1 and the hidden size {d}; got {k}.")
    chosen = auto_method(d, len(input_ids), k, handle.dtype) if method == "auto" else method
    if chosen == "full":
        check_size(len(input_ids), d, handle.dtype)
    t0 = time.perf_counter()
    L, T = handle.n_layers, len(input_ids)
    # the final cumulative view anchors the emergence measure: analyse it even if not shown
    work_sites = sites if "cumulative" in sites else ["cumulative", *sites]
    report(0.0, "Detached forward pass (all layers)")
    rec = record_views(handle.model, handle.adapter, torch.tensor(input_ids, dtype=torch.long), sites=work_sites,
                       lens=lens, forward_products=False)  # reverse products only: no JVP closures
    W_U, W_E = embedding_matrices(handle)
    tok = handle.info.tokenizer
    nv = min(N_VECTORS, k)
    sv = np.zeros((len(sites), L, T, k))
    sr = np.zeros((len(sites), L, T))
    se = np.zeros((len(sites), L, T))
    top_u: dict[tuple[str, int], torch.Tensor] = {}
    u_tok = [[None] * L for _ in sites]
    u_neg = [[None] * L for _ in sites]
    v_tok = [[None] * L for _ in sites]
    converged, max_res, n_products = True, 0.0, 0
    order = [("cumulative", L)] + [(s, kk) for s in work_sites for kk in range(1, L + 1) if (s, kk) != ("cumulative", L)]
    for step, (site, layer) in enumerate(order):
        where = f"block {layer - 1}" if site in BLOCK_SITES else f"layer {layer}"
        report(0.02 + 0.9 * step / len(order), f"{site} view, {where} of {L} blocks")
        op = rec.operators[(site, layer)]
        svd = run_svd(op, k, chosen, tol=tol)
        if not bool(torch.isfinite(svd.S).all()):
            raise NumericalError(
                f"NaN or Inf in the {site} view at x_{layer} ({handle.spec.dtype}): use float32 or bfloat16."
            )
        converged &= svd.converged
        max_res = max(max_res, float(svd.residual.max()))
        n_products += svd.n_products
        top_u[(site, layer)] = svd.U.detach()
        if site not in sites:
            continue
        si = sites.index(site)
        sv[si, layer - 1] = _np(svd.S)
        sr[si, layer - 1] = _np(svd.stable_rank)
        se[si, layer - 1] = _np(svd.stable_rank_se)
        U = svd.U[..., :nv].mT  # [T, nv, d]
        u_tok[si][layer - 1] = decode_output(U, W_U, n_decode).strings(tok)
        u_neg[si][layer - 1] = decode_output(-U, W_U, n_decode).strings(tok)
        v_tok[si][layer - 1] = decode_input(svd.V[..., :nv].mT, W_E, n_decode).strings(tok)
    final = top_u[("cumulative", L)]  # [T, d, k]
    proj = np.zeros((len(sites), L, T))
    for si, site in enumerate(sites):
        for layer in range(1, L + 1):
            u1 = top_u[(site, layer)][..., 0]  # [T, d]
            proj[si, layer - 1] = _np(torch.linalg.vector_norm(torch.einsum("tdk,td->tk", final, u1), dim=-1))
    result = LayersResult(
        **handle.result_fields(input_ids), n_layers=L, sites=sites, lens=bool(lens), k=int(k), n_decode=int(n_decode),
        method=chosen, converged=bool(converged), max_residual=max_res, n_products=n_products,
        elapsed_s=time.perf_counter() - t0, u_tokens=u_tok, u_tokens_neg=u_neg, v_tokens=v_tok, singular_values=sv,
        stable_rank=sr, stable_rank_se=se, projection=proj,
    )
    report(1.0, "Done")
    return result
