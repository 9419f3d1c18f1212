"""Run a model from a chosen ``x_0`` to the residual stream after block ``K``.

Depth is time: ``x_0`` enters block 0 (embeddings with positions or scale already applied, as the
family does), block ``l`` maps ``x_l`` to ``x_{l+1}``, and ``x_L`` leaves the last block. The hooks
here replace ``x_0`` with a tensor we own (so autograd can differentiate with respect to it),
capture ``x_K`` and stop the forward right there (later blocks and the unembedding are skipped).
Both hooks are removed on exit, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import FamilyAdapter


class _StopForward(Exception):
    """Raised by the capture hook: nothing after block ``K`` needs computing."""


@dataclass
class ResidualRun:
    """``x0``: the stream entering block 0 ``[B, T, d]``; ``xk``: the stream after block ``K``."""

    x0: torch.Tensor
    xk: torch.Tensor


@contextlib.contextmanager
def _hooks(layers: nn.ModuleList, k: int, x0: torch.Tensor | None, track_x0: bool, out: dict) -> Iterator[None]:
    def replace_x0(module, args, kwargs):
        current = args[0] if args else kwargs["hidden_states"]
        if x0 is not None:
            if x0.shape != current.shape:
                raise ValueError(f"x0 has shape {tuple(x0.shape)}, the model expects {tuple(current.shape)}")
            new = x0.to(device=current.device, dtype=current.dtype)
        else:
            new = current.detach().requires_grad_(track_x0)
        out["x0"] = new
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    def capture(module, args, kwargs, output):
        out["xk"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handles = [
        layers[0].register_forward_pre_hook(replace_x0, with_kwargs=True),
        layers[k - 1].register_forward_hook(capture, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    with _hooks(layers, layer, x0, track_x0, out):
        try:
            model(**kwargs)
        except _StopForward:
            pass
    if "xk" not in out:
        raise RuntimeError("the capture hook did not run; the adapter's layers() may be wrong")
    return ResidualRun(x0=out["x0"], xk=out["xk"])
