"""The steering methods by name: the built-in four registered here, one line each; others by :func:`register`.

:func:`plan_steering` is the one entry point that turns a method name and its settings into a plan:
settings coerced to the method's ``Params``, checked for the model, the dataset requirement enforced,
then the method's own :meth:`~lldd_core.steering.methods.base.SteeringMethod.plan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ... import ranges as R
from ...errors import InputError
from ...models.loading import ModelHandle
from ..compare import SteeringPlan
from .additive import Additive
from .base import SteeringContext, SteeringMethod
from .jacobian import Jacobian
from .llv import LLV
from .lqr import LQR

#: Names the ``steer`` cache key uses besides a method's own settings (a field of that name would clash).
RESERVED = frozenset({"prompt", "method", "settings", "sizes", "seed", "dataset", "fingerprint"})

_METHODS: dict[str, SteeringMethod] = {}


def register(method: SteeringMethod) -> SteeringMethod:
    """Add ``method`` under its name (a name taken, or a setting named like a key entry, is refused)."""
    if method.name in _METHODS:
        raise ValueError(f"a steering method named {method.name!r} is registered already")
    clash = RESERVED & {f.name for f in dataclasses.fields(method.Params)}
    if clash:
        raise ValueError(f"steering method {method.name!r}: settings named {sorted(clash)} would clash in the cache key")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove the method ``name`` (tests restore the registry with it)."""
    _METHODS.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order (the built-in four first)."""
    return tuple(_METHODS)


def get(name: str) -> SteeringMethod:
    """The method ``name``, else :class:`InputError` naming the registered ones."""
    method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise InputError(f"Unknown method {name!r}: choose one of {', '.join(_METHODS)}.")
    return method


def plan_steering(handle: ModelHandle, method: str, params: Any = None,
                  context: SteeringContext | None = None) -> SteeringPlan:
    """The plan of ``method`` with ``params`` (its ``Params``, a dict of its fields, or ``None`` for the
    defaults) on ``handle``'s model; ``context``: the concept and any cached pieces (module doc)."""
    chosen = get(method)
    context = context if context is not None else SteeringContext()
    checked = chosen.check(chosen.params(params), handle.n_layers, handle.info.d_model)
    R.SEED.check(context.seed)
    if chosen.needs_dataset and context.setup is None:
        raise InputError(f"The {chosen.name} method needs a concept dataset.")
    return chosen.plan(handle, checked, context)


register(Additive())
register(LLV())
register(Jacobian())
register(LQR())
