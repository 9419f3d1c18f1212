"""The cached pieces steering methods read, and the defaults that depend on the depth.

* :class:`SteeringJacobian`: a steering phrase's detached Jacobians ``J_i`` at ``x_layer`` (the Jacobian
  method's operator), checked by reconstruction;
* :class:`MeanJacobians`: the operating prompts' mean last-token block Jacobians ``A_k`` (LQR's dynamics).

The service caches both (``steer-jacobian``, ``mean-jacobians``) and hands them to the methods that
declare them (:meth:`lldd_core.steering.methods.base.SteeringMethod.pieces`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import ranges as R
from ..analysis.gains import GainsSetup
from ..errors import InputError
from ..forward.depth import last_token_actions
from ..forward.jacobian import jacobian_operator, reconstruct, relative_error
from ..models.loading import ModelHandle
from ..models.placement import model_dtype
from ..progress import ProgressFn
from ..store.results import ModelStamp, PromptStamp, result_type

#: The reference implementation's default strength of its norm-matched addition (``lambda_w``).
REFERENCE_LAMBDA = 1.028045295795
#: λ when none is given, per Jacobian variant (λ = 1 / 0 / 0 would leave the text unsteered).
DEFAULT_LAMBDA = {"blend": 0.5, "additive": 0.5, "reference": REFERENCE_LAMBDA}


def default_layer(n_layers: int) -> int:
    """Two thirds of the depth (the papers' choice): ``x_l`` with ``l = round(2L/3)`` (at most ``L - 1``)."""
    return max(0, min(n_layers - 1, round(2 * n_layers / 3)))


def default_jacobian_layer(n_layers: int, variant: str = "blend") -> int:
    """The Jacobian operator's default ``x_layer`` (``1..L``): two thirds of the depth, ``2L//3`` for
    ``reference`` (the reference's ``lsplit``: its Jacobian maps to ``norm(x_lsplit)``, its vector is
    added at ``x_{lsplit-1}``)."""
    if variant == "reference":
        return max(1, 2 * n_layers // 3)
    return max(1, default_layer(n_layers))


@result_type
class SteeringJacobian(PromptStamp):
    """A steering phrase's detached Jacobians ``J_i`` at ``x_layer`` (last token), with their reconstruction check."""

    layer: int
    final_norm: bool  # J maps to norm(x_layer) (the reference variant) instead of x_layer
    reconstruction_error: float  # ||y - Σ_i J_i x_{0,i} - b|| / ||y||, y = x_layer or norm(x_layer)
    J: np.ndarray  # [T_s, d, d]
    b: np.ndarray  # [d] the bias channel (zero for bias-free families)


def analyze_steering_jacobian(handle: ModelHandle, steer_text: str, layer: int,
                              final_norm: bool = False) -> SteeringJacobian:
    """The detached Jacobian and bias channel of ``steer_text`` at ``x_layer`` (or ``norm(x_layer)``),
    checked by reconstruction."""
    if not steer_text.strip():
        raise InputError("The Jacobian method needs a steering phrase (e.g. 'The Golden Gate').")
    layer = R.JACOBIAN_LAYER.check(layer, hi=handle.n_layers)
    ids = handle.info.encode(steer_text)
    op = jacobian_operator(handle.model, handle.adapter, torch.tensor(ids), layer=layer, final_norm=final_norm)
    full = op.full()
    err = relative_error(op.y, reconstruct(full.J, op.x0, full.b))
    return SteeringJacobian(**handle.result_fields(ids), layer=int(layer), final_norm=bool(final_norm),
                            reconstruction_error=err, J=full.J.detach().cpu().numpy(), b=full.b.detach().cpu().numpy())


def mean_jacobians(handle: ModelHandle, prompts: Sequence[Sequence[int]], *, pad_id: int = 0,
                   chunk: int = 64, progress: ProgressFn | None = None) -> torch.Tensor:
    """``A_k`` ``[L, d, d]``: last-token block Jacobians with the context frozen, averaged over ``prompts``."""
    L, d = handle.n_layers, handle.info.d_model
    dtype, device = model_dtype(handle.model), handle.device
    eye = torch.eye(d, dtype=dtype, device=device)
    A = torch.empty(L, d, d, dtype=dtype, device=device)
    for k in range(L):
        for start in range(0, d, chunk):
            cols = last_token_actions(handle.model, handle.adapter, prompts, k, eye[:, start:start + chunk], pad_id=pad_id)
            A[k, :, start:start + chunk] = cols.mean(0)
        if progress is not None:
            progress((k + 1) / L, f"Mean Jacobian of block {k + 1}/{L}")
    return A


@result_type
class MeanJacobians(ModelStamp):
    """The operating prompts' mean last-token block Jacobians ``A_k`` (LQR's dynamics)."""

    dataset: str
    n_prompts: int
    max_tokens: int
    A: np.ndarray  # [L, d, d]


def analyze_mean_jacobians(handle: ModelHandle, setup: GainsSetup, *, n_prompts: int = 50, max_tokens: int = 24,
                           progress: ProgressFn | None = None) -> MeanJacobians:
    """``A_k`` averaged over up to ``n_prompts`` operating prompts cut to their last ``max_tokens`` tokens.

    (The LQR reference averages over 50 prompts with the context cut to 24 tokens.)
    """
    prompts = [ids[-max_tokens:] for ids in setup.operating[:n_prompts]]
    A = mean_jacobians(handle, prompts, pad_id=setup.pad, progress=progress)
    return MeanJacobians(**handle.result_fields(), dataset=setup.data.name, n_prompts=len(prompts),
                         max_tokens=int(max_tokens), A=A.detach().cpu().numpy())
