"""Run a model from a chosen ``x_0`` to the residual stream after block ``K``.

Depth is time: ``x_0`` enters block 0 (embeddings with positions or scale already applied, as the
family does), block ``l`` maps ``x_l`` to ``x_{l+1}``, and ``x_L`` leaves the last block. The hooks
here replace ``x_0`` with a tensor we own (so autograd can differentiate with respect to it),
capture ``x_K`` and stop the forward right there (later blocks and the unembedding are skipped);
:mod:`lldd_core.forward.hooks` removes both on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import FamilyAdapter
from .hooks import hooks, replace_input, run_until, stop_after


@dataclass
class ResidualRun:
    """``x0``: the stream entering block 0 ``[B, T, d]``; ``xk``: the stream after block ``K``."""

    x0: torch.Tensor
    xk: torch.Tensor


def _new_x0(x0: torch.Tensor | None, track_x0: bool, out: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """Block 0's input replacement: ``x0`` (checked against the model's shape) or a fresh leaf copy."""

    def replace(current: torch.Tensor) -> torch.Tensor:
        if x0 is not None:
            if x0.shape != current.shape:
                raise ValueError(f"x0 has shape {tuple(x0.shape)}, the model expects {tuple(current.shape)}")
            new = x0.to(device=current.device, dtype=current.dtype)
        else:
            new = current.detach().requires_grad_(track_x0)
        out["x0"] = new
        return new

    return replace


def run_to_layer(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    layer: int,
    *,
    x0: torch.Tensor | None = None,
    track_x0: bool = False,
    attention_mask: torch.Tensor | None = None,
) -> ResidualRun:
    """Forward ``input_ids`` through blocks ``0..layer-1`` and return ``x_0`` and ``x_layer``.

    Args:
        x0: use this stream instead of the embeddings' (same shape ``[B, T, d]``); when omitted the
            model's own ``x_0`` is used, as a fresh leaf that requires grad if ``track_x0``.
    """
    layers = adapter.layers(model)
    if not 1 <= layer <= len(layers):
        raise ValueError(f"layer must be in 1..{len(layers)}, got {layer}")
    out: dict[str, torch.Tensor] = {}
    if attention_mask is None:  # explicit, so a pad id that is also BOS is never taken for padding
        attention_mask = torch.ones_like(input_ids)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    with hooks(replace_input(layers[0], _new_x0(x0, track_x0, out)), stop_after(layers[layer - 1], out, "xk")):
        run_until(model, **kwargs)
    if "xk" not in out:
        raise RuntimeError("the capture hook did not run; the adapter's layers() may be wrong")
    return ResidualRun(x0=out["x0"], xk=out["xk"])
