"""The detached-Jacobian analysis of one prompt: reconstruction, bias channel, spectra.

Given ``x_0`` (``[T, d]``) and the output ``y`` (see :mod:`lldd_core.forward.jacobian`), it reports

* ``reconstruction_error = ||y - (sum_i J_i x_{0,i} + b)|| / ||y||`` for the detached Jacobian,
* ``plain_reconstruction_error``, the same with the ordinary Jacobian (large: the model is
  nonlinear; only the detached one reproduces ``y``),
* ``detached_vs_normal = ||y_detached - y_normal|| / ||y_normal||`` (detached mode must not change
  the output; float32 norm rounding of stock transformers leaves ~1e-7),
* the bias channel ``b = dy/ds`` and each token's share ``||J_i x_{0,i}||``,
* every token's singular values of ``J_i``, descending.

A prompt whose ``T d^2`` Jacobian does not fit ``LLDD_MAX_JACOBIAN_GB`` is *streamed*
(:mod:`lldd_core.linalg.streamed`): the same row blocks of every ``J_i`` give the reconstruction, the
bias channel and the token shares exactly, without ever holding ``J``; the singular values are then the top
:data:`STREAMED_SINGULAR` per token (residual-checked), and the stable rank is exact (``||J_i||_F^2`` from
the same rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import NumericalError, ResourceError
from ..forward.jacobian import JacobianOperator, jacobian_operator, reconstruct, relative_error
from ..linalg.spectral import singular_values, stable_rank
from ..models.loading import ModelHandle
from ..progress import ProgressFn
from ..store.results import PromptStamp, result_type

ANALYSIS = "jacobian"
#: Singular values per token on the streamed path (a prompt whose Jacobian does not fit).
STREAMED_SINGULAR = 16


@result_type
class JacobianResult(PromptStamp):
    """Detached and ordinary Jacobians of the last token's output at ``layer``, reduced to what the view shows.

    ``T`` tokens, ``d`` the hidden size; ``y = Σ_i J_i x_{0,i} + b`` is checked by reconstruction.
    """

    layer: int
    n_layers: int
    final_norm: bool
    reconstruction_error: float
    plain_reconstruction_error: float
    detached_vs_normal: float
    output_norm: float
    bias_norm: float
    plain_bias_norm: float
    elapsed_s: float
    y: np.ndarray  # [d] output embedding
    reconstruction: np.ndarray  # [d] sum_i J_i x_i + b, detached
    plain_reconstruction: np.ndarray  # [d] the same with the ordinary Jacobian
    bias: np.ndarray  # [d] b = dy/ds
    token_contributions: np.ndarray  # [T] ||J_i x_{0,i}||
    singular_values: np.ndarray  # [T, min(d_out, d_in)] descending (streamed: the top STREAMED_SINGULAR)
    stable_rank: np.ndarray  # [T]
    #: True where ``J`` did not fit and was streamed: ``singular_values`` holds only each token's top values.
    streamed: bool = False

    def top_singular_values(self, k: int) -> list[list[float]]:
        return [row[:k].tolist() for row in self.singular_values]

    def validate(self) -> None:
        """Shapes agree with the tokens and the singular values are finite (the cache checks before storing)."""
        T = len(self.tokens)
        if self.singular_values.ndim != 2 or self.singular_values.shape[0] != T:
            raise ValueError(f"singular_values has shape {self.singular_values.shape} for {T} tokens")
        if self.token_contributions.shape != (T,) or self.stable_rank.shape != (T,):
            raise ValueError(f"per-token arrays do not have {T} entries")
        if not np.isfinite(self.singular_values).all():
            raise ValueError("non-finite singular values")


def max_jacobian_bytes() -> int:
    """``$LLDD_MAX_JACOBIAN_GB`` (default 8) in bytes; garbage there is refused in one line."""
    from ..env import env_number
    from ..ranges import MAX_JACOBIAN_GB

    return int(env_number("LLDD_MAX_JACOBIAN_GB", MAX_JACOBIAN_GB, 8) * (1 << 30))


def _jacobian_bytes(n_tokens: int, d: int, dtype: torch.dtype) -> int:
    return n_tokens * d * d * torch.empty((), dtype=dtype).element_size()


def fits(n_tokens: int, d: int, dtype: torch.dtype) -> bool:
    """Whether a full Jacobian (``T d^2`` entries) fits ``LLDD_MAX_JACOBIAN_GB``."""
    return _jacobian_bytes(n_tokens, d, dtype) <= max_jacobian_bytes()


def check_size(n_tokens: int, d: int, dtype: torch.dtype) -> None:
    """Refuse a full Jacobian that would not fit (``T d^2`` entries), with what to do instead."""
    need = _jacobian_bytes(n_tokens, d, dtype)
    if need > max_jacobian_bytes():
        raise ResourceError(
            f"The full Jacobian for {n_tokens} tokens at width {d} needs {need / 2**30:.1f} GiB "
            f"(limit {max_jacobian_bytes() / 2**30:.1f} GiB, LLDD_MAX_JACOBIAN_GB): use the streamed method, "
            "or shorten the prompt."
        )


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def analyze_jacobian(
    handle: ModelHandle,
    input_ids: list[int],
    *,
    layer: int | None = None,
    final_norm: bool = True,
    progress: ProgressFn | None = None,
) -> JacobianResult:
    """Detached and ordinary Jacobians of the last token's output for ``input_ids``."""
    report = progress or (lambda frac, msg: None)
    layer = handle.n_layers if layer is None else layer
    t0 = time.perf_counter()
    ids = torch.tensor(input_ids, dtype=torch.long)
    if not fits(len(input_ids), handle.info.d_model, handle.dtype):
        return _analyze_streamed(handle, input_ids, ids, layer, final_norm, report, t0)

    report(0.0, "Detached forward pass")
    op = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=final_norm)
    full = op.full(progress=lambda f, m: report(0.05 + 0.5 * f, "Detached " + m))
    recon = reconstruct(full.J, op.x0, full.b)

    report(0.55, "Ordinary forward pass")
    plain = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=final_norm, detached=False)
    plain_full = plain.full(progress=lambda f, m: report(0.6 + 0.3 * f, "Ordinary " + m))
    plain_recon = reconstruct(plain_full.J, plain.x0, plain_full.b)
    if not _finite(op.y, full.J, full.b, plain.y):
        raise _non_finite(handle)

    report(0.9, "Singular values")
    sv = singular_values(full.J)
    contributions = torch.linalg.vector_norm(torch.einsum("tod,td->to", full.J, op.x0.to(full.J.dtype)), dim=-1)
    result = _result(handle, input_ids, layer, final_norm, t0, op.y, plain.y, recon, plain_recon, full.b, plain_full.b,
                     contributions, sv, stable_rank(sv))
    report(1.0, "Done")
    return result


def _non_finite(handle: ModelHandle) -> NumericalError:
    return NumericalError(
        f"The model produced NaN or Inf in {handle.spec.dtype}: use float32 or bfloat16 "
        "(float16 overflows easily), or a shorter prompt."
    )


def _result(handle: ModelHandle, input_ids: list[int], layer: int, final_norm: bool, t0: float, y: torch.Tensor,
            plain_y: torch.Tensor, recon: torch.Tensor, plain_recon: torch.Tensor, bias: torch.Tensor,
            plain_bias: torch.Tensor, contributions: torch.Tensor, sv: torch.Tensor, stable: torch.Tensor,
            streamed: bool = False) -> JacobianResult:
    """The result of either path from its outputs, reconstructions, biases, token shares and spectra."""
    return JacobianResult(
        **handle.result_fields(input_ids),
        layer=int(layer),
        n_layers=handle.n_layers,
        final_norm=bool(final_norm),
        reconstruction_error=relative_error(y, recon),
        plain_reconstruction_error=relative_error(plain_y, plain_recon),
        detached_vs_normal=relative_error(plain_y, y),
        output_norm=float(y.detach().double().norm()),
        bias_norm=float(bias.detach().double().norm()),
        plain_bias_norm=float(plain_bias.detach().double().norm()),
        elapsed_s=time.perf_counter() - t0,
        y=_np(y),
        reconstruction=_np(recon),
        plain_reconstruction=_np(plain_recon),
        bias=_np(bias),
        token_contributions=_np(contributions),
        singular_values=_np(sv),
        stable_rank=_np(stable),
        streamed=streamed,
    )


def _analyze_streamed(handle: ModelHandle, input_ids: list[int], ids: torch.Tensor, layer: int, final_norm: bool,
                      report: ProgressFn, t0: float) -> JacobianResult:
    """:func:`analyze_jacobian` for a prompt whose Jacobian does not fit: row blocks, never ``J`` (module doc)."""
    from ..linalg.streamed import stream_rows, topk_svd_streamed
    from .spectrum import DEFAULT_OVERSAMPLE, DEFAULT_TOL

    def reconstruction(op: JacobianOperator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Callable]:
        recon = torch.zeros(op.d_out, dtype=torch.float64)
        bias = torch.zeros(op.d_out, dtype=torch.float64)
        shares = torch.zeros(op.n_tokens, dtype=torch.float64)
        x0 = op.x0.to(torch.float64).cpu()

        def on_block(r0: int, r1: int, R: torch.Tensor, b: torch.Tensor) -> None:
            JX = torch.einsum("tcd,td->tc", R.to(torch.float64).cpu(), x0)  # rows r0:r1 of every J_i x_i
            recon[r0:r1] = JX.sum(0) + b.to(torch.float64).cpu()
            bias[r0:r1] = b.to(torch.float64).cpu()
            shares.add_(JX.pow(2).sum(1))

        return recon, bias, shares, on_block

    report(0.0, "Detached forward pass (streamed: the Jacobian does not fit)")
    op = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=final_norm)
    recon, bias, shares, on_block = reconstruction(op)
    k = min(STREAMED_SINGULAR, handle.info.d_model)
    svd = topk_svd_streamed(op, k, tol=DEFAULT_TOL, oversample=DEFAULT_OVERSAMPLE, n_extremes=0, on_block=on_block,
                            progress=lambda f, m: report(0.02 + 0.6 * f, f"Detached rows, {m}")).svd
    report(0.62, "Ordinary forward pass")
    plain = jacobian_operator(handle.model, handle.adapter, ids, layer=layer, final_norm=final_norm, detached=False)
    plain_recon, plain_bias, _, plain_block = reconstruction(plain)
    stream_rows(plain, plain_block, progress=lambda f, m: report(0.65 + 0.33 * f, f"Ordinary {m}"))
    if not (_finite(op.y, svd.S, plain.y) and bool(torch.isfinite(recon).all())):
        raise _non_finite(handle)
    return _result(handle, input_ids, layer, final_norm, t0, op.y, plain.y, recon, plain_recon, bias, plain_bias,
                   shares.sqrt(), svd.S, svd.stable_rank, streamed=True)


def _np(t: torch.Tensor) -> np.ndarray:
    """float64 numpy copy (half-precision values widen exactly)."""
    return t.detach().to("cpu", torch.float64).numpy()
