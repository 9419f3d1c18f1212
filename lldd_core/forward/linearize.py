"""Detached mode: the model's forward with its nonlinear factors frozen (stop-gradient).

Inside :func:`detached_mode` the forward computes exactly the same values, but autograd sees a
function that is linear in the residual stream ``x_0`` (and in the bias scale ``s``, see
:mod:`lldd_core.forward.jacobian`):

* norms: ``RMSNorm(x) = x * sg(rsqrt(mean(x^2) + eps)) * (offset + w)`` and
  ``LayerNorm(x) = (x - mean(x)) * sg(rsqrt(var(x) + eps)) * w + b``, computed in the input's
  dtype (stock transformers upcasts to float32, whose rounding is not linear and stalls a float64
  reconstruction near 1e-7);
* gated MLPs: the whole activated gate ``sg(act(gate(x)))`` is frozen, ``up(x)`` stays live;
* plain MLPs: ``act(z) = z * sg(act(z) / z)``;
* attention: ``Q`` and ``K`` are frozen after their rotary embedding and norms, so the softmax
  weights are constants and the path through ``V`` is linear (GPT-OSS's sink logits included);
* mixture-of-experts MLPs: the adapter's routers and ``frozen`` modules (Qwen2-MoE's shared-expert
  gate) return detached outputs, so the top-k choice and the routing weights are constants at this
  input (a float64 model's softmax-first routers computed in float64, as in live mode); each expert
  is a gated MLP with its activated gate detached (or the family's own detached activation, the
  adapter's ``detached_methods``).

``sg`` is ``Tensor.detach``. Nothing in the installed packages is edited: norm and activation
modules get an instance-level ``forward`` and the attention goes through a function registered in
transformers' attention registry (with a matching mask function, without which the registry passes
no causal mask at all). Everything is restored on exit, also on error.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..errors import UnsupportedFamilyError
from ..models.arch import FamilyAdapter
from ..models.arch.base import is_layer_norm
from ..models.placement import forward_attribute, model_dtype, replaced_attributes, replaced_forwards

DETACHED_ATTENTION = "lldd_detached"
LIVE_ATTENTION = "lldd_eager"

_HALF = (torch.float16, torch.bfloat16)


def _family_eager_attention(module: nn.Module) -> Callable:
    """The eager attention function defined next to the module's class (scaling, GQA, soft-capping)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedFamilyError(f"{type(module).__name__} has no eager attention function to linearize.")
    return fn


def _detached_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The family's eager attention with ``Q`` and ``K`` frozen: softmax weights become constants.

    The output is recomputed from those weights by :func:`weights_times_values` (the same numbers, up to
    rounding): the products autograd records are then 2-D, which batched VJPs handle without copying the
    weights once per cotangent.
    """
    eager = _family_eager_attention(module)
    out, weights = eager(module, query.detach(), key.detach(), value, attention_mask, **kwargs)
    if weights is None or weights.requires_grad or weights.shape[:2] != (query.shape[0], query.shape[1]):
        return out, weights
    return weights_times_values(weights, value).to(out.dtype), weights


def weights_times_values(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``weights @ value`` per batch row and head as 2-D products, ``[B, T, H, d_head]`` like the eager output.

    ``weights``: ``[B, H, T, S]`` constants; ``value``: ``[B, H_kv, S, d_head]`` (grouped-query heads share one).
    A batched VJP (``is_grads_batched``: a vmap over the cotangents) through a 4-D ``matmul`` copies the
    broadcast weights once per cotangent (``[c, H, T, S]``: measured 160 MB for 8 cotangents at T = 1600,
    2 heads); through a 2-D ``mm`` its batching rule folds the cotangents into the columns of one product.
    """
    B, H = weights.shape[:2]
    rep = H // value.shape[1]
    rows = [torch.stack([weights[b, h] @ value[b, h // rep].to(weights.dtype) for h in range(H)]) for b in range(B)]
    return torch.stack(rows).transpose(1, 2).contiguous()


def _float64_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, *, scaling: float | None = None,
                       softcap: float | None = None, dropout: float = 0.0, s_aux: torch.Tensor | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention computed in float64 throughout (GQA, scaling, soft-capping, additive mask, and
    GPT-OSS's per-head sink logits ``s_aux``: one extra softmax column per head, dropped after).

    The families' eager functions compute the softmax in float32 even for a float64 model; that
    rounding is invisible in a forward pass but makes float64 finite differences and derivatives
    disagree at ~1e-6. Same formula as theirs, without the down-cast (dropout: eval mode only).
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    if s_aux is not None:
        sinks = s_aux.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        weights = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    else:
        weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _live_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The family's eager attention (batched reverse mode and forward AD work through it).

    Float64 models whose eager function takes ``scaling`` (every family but GPT-2, whose own
    eager path stays in the input dtype) get the same formula without its float32 softmax.
    """
    if query.dtype == torch.float64 and "scaling" in kwargs and not module.training:
        return _float64_attention(module, query, key, value, attention_mask, **kwargs)
    eager = _family_eager_attention(module)
    return eager(module, query, key, value, attention_mask, **kwargs)


def _padding_safe_eager_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """``eager_mask``, but a query row with every key masked (a left-padding position) sees all keys.

    Such a row's softmax is NaN in some families' eager attention (GPT-NeoX measured); its output
    is never read, but at the next layer ``0 * NaN`` in ``weights @ V`` spreads the NaN to real
    tokens. Opening the fully masked rows keeps every value finite and changes nothing else.
    """
    mask = eager_mask(*args, **kwargs)
    if mask is None or mask.dtype == torch.bool:
        return mask
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    return mask.masked_fill(blocked.all(-1, keepdim=True), 0.0)


def _register_attention() -> None:
    # Registering the mask function too is essential: without it the model builds no mask for
    # these names and attention silently becomes bidirectional.
    for name, fn in ((DETACHED_ATTENTION, _detached_attention), (LIVE_ATTENTION, _live_attention)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, _padding_safe_eager_mask)


_register_attention()


# --- detached replacements -------------------------------------------------------------------


def _norm_eps(module: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise AttributeError(f"cannot find eps of {type(module).__name__}")


def _scale(sq_mean: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """``sg(rsqrt(sq_mean + eps))``; in half precision the (frozen) scale is computed in float32."""
    if dtype in _HALF:
        sq_mean = sq_mean.float()
    return torch.rsqrt(sq_mean + eps).detach().to(dtype)


def _affine(norm: nn.Module, y: torch.Tensor, dtype: torch.dtype, offset: float) -> torch.Tensor:
    """The norm's elementwise affine part on the normalized ``y``: ``y · (w + offset) + b`` (each if present)."""
    weight = getattr(norm, "weight", None)
    if weight is not None:
        y = y * (weight.to(dtype) + offset) if offset else y * weight.to(dtype)
    bias = getattr(norm, "bias", None)
    return y + bias.to(dtype) if isinstance(bias, torch.Tensor) else y


def _detached_rms_norm(offset: float) -> Callable:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        sq_mean = (x.float() if x.dtype in _HALF else x).pow(2).mean(-1, keepdim=True)
        y = x * _scale(sq_mean, _norm_eps(self), x.dtype)
        return _affine(self, y, x.dtype, offset)

    return forward


def _float64_rms_norm(offset: float) -> Callable:
    """RMSNorm in float64 throughout (stock transformers computes it in float32 even for float64)."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _norm_eps(self))
        return _affine(self, y, x.dtype, offset)

    return forward


def _float64_layer_norm(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A family's own LayerNorm class (Cohere's, weight only) in float64 throughout; theirs upcasts to float32."""
    centred = x - x.mean(-1, keepdim=True)
    return _affine(self, centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + _norm_eps(self)), x.dtype, 0.0)


def _float64_norm(offset: float, norm: nn.Module) -> Callable | None:
    """The float64 forward for ``norm`` in live mode; ``None`` for ``nn.LayerNorm``, exact in float64 already."""
    if isinstance(norm, nn.LayerNorm):
        return None
    return _float64_layer_norm if is_layer_norm(norm) else _float64_rms_norm(offset)
def _float64_softmax_router(self: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A softmax-then-top-k MoE router in float64 throughout: ``p = softmax(W x)``, the top-k of ``p``,
    renormalized to sum 1 when ``norm_topk_prob`` (Mixtral has no flag and always renormalizes). Stock
    transformers upcasts the softmax to float32 only. Returns ``(logits, weights, indices)`` like theirs."""
    x = hidden_states.reshape(-1, hidden_states.shape[-1])
    logits = torch.nn.functional.linear(x, self.weight, getattr(self, "bias", None))
    top, indices = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
    if getattr(self, "norm_topk_prob", True):
        top = top / top.sum(dim=-1, keepdim=True)
    return logits, top, indices


def _float64_routers(model: nn.Module, adapter: FamilyAdapter) -> bool:
    """Whether the routers run :func:`_float64_softmax_router` (a float64 model, a softmax-first router)."""
    return adapter.router_softmax_first and model_dtype(model) == torch.float64


def _detached_layer_norm(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    sq_mean = (centred.float() if x.dtype in _HALF else centred).pow(2).mean(-1, keepdim=True)
    y = centred * _scale(sq_mean, _norm_eps(self), x.dtype)
    if getattr(self, "weight", None) is not None:
        y = y * self.weight.to(x.dtype)
    if getattr(self, "bias", None) is not None:
        y = y + self.bias.to(x.dtype)
    return y


def _detached_gate(original: Callable) -> Callable:
    def forward(self: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return original(z).detach()

    return forward


def _detached_plain_activation(original: Callable) -> Callable:
    def forward(self: nn.Module, z: torch.Tensor) -> torch.Tensor:
        # detach, not no_grad: no_grad stops reverse mode only, forward AD would still see the ratio
        zc = z.detach()
        ratio = original(zc) / torch.where(zc == 0, torch.ones_like(zc), zc)
        return z * ratio

    return forward


def _detached_outputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached_outputs(v) for v in value)
    return value


def _frozen(original: Callable) -> Callable:
    """A module whose outputs are constants: a router's top-k choice and weights, a gate's logit."""

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return _detached_outputs(original(*args, **kwargs))

    return forward


# --- context managers ------------------------------------------------------------------------


def _patched_forwards(patches: list[tuple[nn.Module, Callable]]) -> contextlib.AbstractContextManager:
    """Each module's forward becomes ``fn`` bound to it (inside accelerate's hook, if any) until exit."""
    return replaced_forwards([(module, MethodType(fn, module)) for module, fn in patches])


def _bound_methods(methods: list[tuple[nn.Module, str, Callable]]) -> contextlib.AbstractContextManager[None]:
    """Each ``(module, name, fn)``: ``module.<name>`` is ``fn`` bound to it until exit, also on error."""
    return replaced_attributes((module, name, MethodType(fn, module)) for module, name, fn in methods)


@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    """Switch the model to the registered attention function ``name``; restore it on exit."""
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _unique(modules: Iterator[nn.Module]) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for m in modules:
        seen.setdefault(id(m), m)
    return list(seen.values())


@contextlib.contextmanager
def detached_mode(model: nn.Module, adapter: FamilyAdapter) -> Iterator[nn.Module]:
    """Linearize ``model`` in place (norms, activations, attention detached) for the ``with`` body.

    The forward's values are unchanged up to rounding; the model's attention implementation, module
    forwards and training flag are restored on exit.
    """
    patches: list[tuple[nn.Module, Callable]] = []
    for norm in _unique(adapter.norms(model)):
        if is_layer_norm(norm):
            patches.append((norm, _detached_layer_norm))
        else:
            patches.append((norm, _detached_rms_norm(adapter.norm_weight_offset)))
    for act in _unique(adapter.activations(model)):
        original = type(act).forward.__get__(act)
        wrap = _detached_gate if adapter.gated_mlp else _detached_plain_activation
        patches.append((act, wrap(original)))
    float64_routers = {id(r) for r in adapter.routers(model)} if _float64_routers(model, adapter) else set()
    for module in _unique(adapter.frozen_modules(model)):
        inner = (MethodType(_float64_softmax_router, module) if id(module) in float64_routers
                 else getattr(module, forward_attribute(module)))
        patches.append((module, _frozen(inner)))
    methods = list(adapter.detached_methods(model))
    with (_eval_mode(model), attention_implementation(model, DETACHED_ATTENTION), _patched_forwards(patches),
          _bound_methods(methods)):
        yield model


@contextlib.contextmanager
def live_mode(model: nn.Module, adapter: FamilyAdapter) -> Iterator[nn.Module]:
    """The ordinary model with an eager attention path (for the ordinary Jacobian and forward AD).

    A float64 model also gets float64 RMSNorms, family LayerNorms (Cohere's), softmax and MoE router softmax
    (stock transformers rounds them to float32 inside; harmless in a forward pass, but finite differences and
    derivatives then disagree at ~1e-6). Lower precisions run exactly the stock arithmetic.
    """
    patches: list[tuple[nn.Module, Callable]] = []
    if model_dtype(model) == torch.float64:
        fns = [(n, _float64_norm(adapter.norm_weight_offset, n)) for n in _unique(adapter.norms(model))]
        patches = [(n, fn) for n, fn in fns if fn is not None]
    if _float64_routers(model, adapter):
        patches += [(r, _float64_softmax_router) for r in _unique(adapter.routers(model))]
    with _eval_mode(model), attention_implementation(model, LIVE_ATTENTION), _patched_forwards(patches):
        yield model
