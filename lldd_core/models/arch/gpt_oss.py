"""GPT-OSS: biased attention with a learned sink logit per head, alternating sliding-window and full
layers, and a sparse MoE MLP (``mlp.router``: top-k logits, softmax over the chosen) whose experts use a
clamped gated activation with interleaved gate/up columns:

    E(x) = down((clamp(u, -c, c) + 1) * glu(min(g, c))) + b_down,   glu(z) = z * sigmoid(alpha z),

with ``g, u = x W_gu + b_gu``. Detached mode freezes the router (top-k choice and weights) and, in each
expert, the whole activated gate ``glu(min(g, c))`` and the clamp's ratio ``clamp(u)/u``, so
``E(x) = down((u * sg(clamp(u)/u) + s) * sg(glu)) + s b_down``: linear in ``(x, s)``, where the constant
``+1`` is the bias channel's ``s`` like every bias. The sinks only enter the softmax over Q and K, which
detached attention freezes anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..placement import bias_scale
from .base import FamilyAdapter


def detached_apply_gate(self: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """``GptOssExperts._apply_gate`` with its nonlinear factors detached and ``+1`` as the bias scale ``s``."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    g = gate.detach().clamp(max=self.limit)
    glu = g * torch.sigmoid(g * self.alpha)  # a constant: built from detached values only
    u = up.detach()
    ratio = u.clamp(-self.limit, self.limit) / torch.where(u == 0, torch.ones_like(u), u)
    s = bias_scale()
    one = s.to(device=up.device, dtype=up.dtype) if isinstance(s, torch.Tensor) else s
    return (up * ratio + one) * glu


class GptOssAdapter(FamilyAdapter):
    name = "GPT-OSS"
    model_types = ("gpt_oss",)
    experts = True
    biases = True
    router = "mlp.router"

    def detached_methods(self, model: nn.Module) -> Iterator[tuple[nn.Module, str, Callable]]:
        for block in self.layers(model):
            yield block.mlp.experts, "_apply_gate", detached_apply_gate
