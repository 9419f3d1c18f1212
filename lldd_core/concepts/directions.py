"""Concept directions: the normalized class-mean difference of hidden states, per layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError, NumericalError


def class_directions(states: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int], *,
                     allow_zero: bool = False) -> np.ndarray | torch.Tensor:
    r"""Concept directions: per layer, the unit vector of the class-mean difference.

    With ``x_{i,l}`` the state of example ``i`` at layer ``l`` (``states[i, l]``, shape
    ``[N, n_layers+1, d]``) and ``y_i ∈ {0, 1}``::

        μ_{c,l} = (1/N_c) Σ_{i: y_i = c} x_{i,l}
        v_l     = (μ_{1,l} − μ_{0,l}) / ‖μ_{1,l} − μ_{0,l}‖₂

    so ``v_l`` points from class 0 towards class 1 (label 1 = the first-named class). Means are
    accumulated in float64; the result has the input's type (numpy or torch, same device) and
    floating dtype (float64 for integer input), shape ``[n_layers+1, d]``.

    A layer where the two means coincide (``‖μ_1 − μ_0‖ ≤ 1e-12 · max(‖μ_1‖, ‖μ_0‖)``) has no
    direction: that raises :class:`NumericalError` naming the layers, unless ``allow_zero``, which
    returns a zero row there (this happens at layer 0 when every text ends with the same token and
    the model adds no position embedding to the stream). Non-finite states raise
    :class:`NumericalError`; bad shapes or labels raise :class:`InputError`.
    """
    is_torch = isinstance(states, torch.Tensor)
    if is_torch:
        out_dtype = states.dtype if states.is_floating_point() else torch.float64
        x = states.detach().to(torch.float64)
    else:
        arr = np.asarray(states)
        out_np_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if x.ndim != 3:
        raise InputError(f"states must have shape [N, n_layers+1, d], got {tuple(x.shape)}")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"labels must have one entry per example ({x.shape[0]}), got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InputError("labels must be 0 or 1 (1 = the first-named class)")
    n1 = int((y == 1).sum())
    if n1 == 0 or n1 == y.shape[0]:
        raise InputError(f"class directions need examples of both classes; got {n1} with label 1 and "
                         f"{y.shape[0] - n1} with label 0")
    if not torch.isfinite(x).all():
        raise NumericalError("the states contain NaN or Inf (try float32 or float64 instead of half precision)")
    mask = torch.from_numpy(y == 1).to(x.device)
    mu1 = x[mask].mean(dim=0)
    mu0 = x[~mask].mean(dim=0)
    diff = mu1 - mu0
    norms = diff.norm(dim=-1)
    scale = torch.maximum(mu1.norm(dim=-1), mu0.norm(dim=-1))
    zero = norms <= 1e-12 * scale.clamp_min(torch.finfo(torch.float64).tiny)
    if bool(zero.any()) and not allow_zero:
        layers = zero.nonzero().flatten().tolist()
        raise NumericalError(
            f"the two class means are identical at layer(s) {layers[:20]}, so there is no concept direction "
            f"there (e.g. every text ends with the same token and layer 0 holds only its embedding); "
            f"use other layers, or allow_zero=True to get zero vectors for them"
        )
    v = torch.where(zero[:, None], torch.zeros_like(diff), diff / norms.clamp_min(1e-300)[:, None])
    if is_torch:
        return v.to(out_dtype)
    return v.numpy().astype(out_np_dtype, copy=False)
