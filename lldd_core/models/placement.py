"""Where a model's tensors live and how to wrap its modules, also when accelerate dispatched it.

A model loaded with a ``device_map`` (``device="map"``) has accelerate hooks on its modules: the
instance attribute ``forward`` is accelerate's wrapper, which moves inputs to the module's
execution device, loads offloaded weights (CPU or disk) into the module for the call and puts
them back afterwards; the module's own forward is kept in ``_old_forward``. So

* an instance-level patch (detached mode, the bias channel) must replace ``_old_forward`` under a
  hook (:func:`forward_attribute`), else it would bypass the weight loading;
* an offloaded parameter is on the ``meta`` device outside its module's call: read it with
  :func:`tensor_of`, and ask :func:`input_device` where inputs go, not the first parameter.

For a model without hooks all of this reduces to the plain attributes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn


def _hook(module: nn.Module) -> object | None:
    return getattr(module, "_hf_hook", None)


def offloaded(model: nn.Module) -> list[str]:
    """Modules of the device map kept on the disk, or on the CPU while the others run on accelerators."""
    device_map = getattr(model, "hf_device_map", None) or {}
    accelerators = any(where not in ("cpu", "disk") for where in device_map.values())
    return [name for name, where in device_map.items() if where == "disk" or (where == "cpu" and accelerators)]


def forward_attribute(module: nn.Module) -> str:
    """The instance attribute to patch to change what ``module`` computes: ``_old_forward`` under an
    accelerate hook (its ``forward`` loads offloaded weights first), else ``forward``."""
    return "_old_forward" if _hook(module) is not None and "_old_forward" in module.__dict__ else "forward"


def _as_device(device: object) -> torch.device:
    return torch.device(f"cuda:{device}") if isinstance(device, int) else torch.device(device)


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embedding's execution device (its weight may be offloaded)."""
    emb = model.get_input_embeddings()
    device = getattr(_hook(emb), "execution_device", None)
    return _as_device(device) if device is not None else emb.weight.device


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point parameters (the first one's)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def tensor_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` with its values, also when accelerate offloaded it (then it is ``meta`` here
    and the values come from the hook's weights map, on the CPU)."""
    value = getattr(module, name)
    if value.device.type != "meta":
        return value
    weights = getattr(_hook(module), "weights_map", None)
    if weights is None:
        raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and has no offloaded copy")
    return weights[name].to(value.dtype)


@contextlib.contextmanager
def replaced_forwards(replacements: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Give each module a new instance-level forward (``_old_forward`` under an accelerate hook, see
    :func:`forward_attribute`) for the ``with`` body; the previous state comes back on exit, also on error."""
    with replaced_attributes((module, forward_attribute(module), fn) for module, fn in replacements):
        yield


@contextlib.contextmanager
def replaced_attributes(replacements: Iterable[tuple[nn.Module, str, object]]) -> Iterator[None]:
    """Each ``(module, name, value)``: the instance attribute ``module.<name>`` is ``value`` for the ``with``
    body; the previous state (an instance attribute or none) comes back on exit, also on error."""
    saved: list[tuple[nn.Module, str, object]] = []
    try:
        for module, attr, value in replacements:
            saved.append((module, attr, module.__dict__.get(attr)))
            module.__dict__[attr] = value
        yield
    finally:
        for module, attr, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop(attr, None)
            else:
                module.__dict__[attr] = previous


#: The bias channel's scale ``s`` while :func:`scaled_biases` is active (``1.0`` otherwise): a detached
#: forward that adds a constant which is not a ``*bias`` parameter (GPT-OSS's ``+1`` on the expert up
#: branch) multiplies it by :func:`bias_scale`, so the constant joins the bias channel too.
_BIAS_SCALE: contextvars.ContextVar[torch.Tensor | float] = contextvars.ContextVar("lldd_bias_scale", default=1.0)


def bias_scale() -> torch.Tensor | float:
    """The current bias-channel scale ``s`` (a tensor inside :func:`scaled_biases`, else ``1.0``)."""
    return _BIAS_SCALE.get()


def _bias_names(module: nn.Module) -> list[str]:
    """The module's own parameters named ``bias`` or ``*_bias`` (MoE experts keep ``gate_up_proj_bias``)."""
    return [k for k, p in module._parameters.items() if p is not None and (k == "bias" or k.endswith("_bias"))]


@contextlib.contextmanager
def scaled_biases(modules: Iterable[nn.Module], s: torch.Tensor) -> Iterator[None]:
    """During each call of a module that owns bias parameters (``bias``, ``*_bias``), each is ``s * bias``.

    With ``s = 1`` (requires grad) values are unchanged and ``∂y/∂s`` is the bias channel of the
    detached map (:mod:`lldd_core.forward.jacobian`). The swap happens inside the module's own forward, after
    accelerate loaded an offloaded bias and before it is put back, so it works for dispatched and
    offloaded models alike; every wrapper is removed on exit. :func:`bias_scale` returns ``s`` meanwhile.
    """

    def wrap(module: nn.Module, names: list[str], inner: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            saved = {k: module._parameters[k] for k in names}
            for k, bias in saved.items():
                module._parameters[k] = bias * s.to(device=bias.device, dtype=bias.dtype)
            try:
                return inner(*args, **kwargs)
            finally:
                module._parameters.update(saved)

        return forward

    biased = [(m, _bias_names(m)) for m in dict.fromkeys(modules)]  # unique, in order
    token = _BIAS_SCALE.set(s)
    try:
        with replaced_forwards([(m, wrap(m, names, getattr(m, forward_attribute(m)))) for m, names in biased if names]):
            yield
    finally:
        _BIAS_SCALE.reset(token)
