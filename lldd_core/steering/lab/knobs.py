"""Each steering method's own strength knob in the lab, one registered :class:`Knob` per method.

A knob turns a swept value (and, for methods that steer at one layer, the layer) into the method's settings
for :func:`~lldd_core.steering.methods.registry.plan_steering`; its value ``0`` leaves the text unsteered:

* ``additive``: ``α`` of ``α v_l`` at ``x_l`` (last position);
* ``llv``: the target shift ``Δy`` of the least-energy schedule over the trusted layers (``u = 0`` at ``Δy = 0``);
* ``jacobian``: ``λ`` of the norm-matched variant ``x_ℓ ← x_ℓ + λ a ‖x_ℓ‖/(2‖a‖)`` (``λ = 0``: unsteered);
* ``lqr``: the state weight ``q``, with the terminal weight scaled alike (``q_f = q · q_f⁰/q⁰`` of the method's
  defaults): ``q = q_f = 0`` makes every Riccati gain ``K_k = 0``, so no feedback is added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import ranges as R
from ...errors import InputError
from ..methods.registry import get as get_method


@dataclass(frozen=True)
class Knob:
    """How the lab sweeps one method: the knob's name and symbol, its range, the default grid, whether cells
    vary the layer (and in which range), and ``build(value, layer, phrase)`` → the method's settings (a dict)."""

    method: str
    name: str
    symbol: str
    range: R.Range
    defaults: tuple[float, ...]
    build: Callable[[float, int | None, str], dict[str, Any]]
    layer_range: R.Range | None = None  # None: the method steers every (trusted) layer itself

    @property
    def layered(self) -> bool:
        return self.layer_range is not None


def _additive(value: float, layer: int | None, phrase: str) -> dict[str, Any]:
    return {"layers": [layer], "strength": value, "positions": "last"}


def _llv(value: float, layer: int | None, phrase: str) -> dict[str, Any]:
    return {"dy": value}


def _jacobian(value: float, layer: int | None, phrase: str) -> dict[str, Any]:
    return {"steer_text": phrase, "layers": [layer], "lam": value, "variant": "additive"}


def _lqr(value: float, layer: int | None, phrase: str) -> dict[str, Any]:
    defaults = get_method("lqr").Params()
    ratio = defaults.qf / defaults.q if defaults.q else 1.0
    return {"q": value, "qf": value * ratio}


_KNOBS: dict[str, Knob] = {}


def register(knob: Knob) -> Knob:
    """Add ``knob`` for its method (one knob per method)."""
    if knob.method in _KNOBS:
        raise ValueError(f"the steering method {knob.method!r} has a lab knob already")
    _KNOBS[knob.method] = knob
    return knob


def unregister(method: str) -> None:
    _KNOBS.pop(method, None)


def knob(method: str) -> Knob:
    """The knob of ``method``, else :class:`InputError` naming the methods the lab sweeps."""
    found = _KNOBS.get(method) if isinstance(method, str) else None
    if found is None:
        raise InputError(f"The Steering lab cannot sweep {method!r}: choose from {', '.join(_KNOBS)}.")
    return found


def swept() -> tuple[str, ...]:
    """The methods the lab can sweep (registration order)."""
    return tuple(_KNOBS)


register(Knob("additive", "strength", "α", R.STRENGTH, (0.0, 4.0, 8.0, 16.0, 32.0), _additive, R.STEER_LAYER))
register(Knob("llv", "dy", "Δy", R.DY, (0.0, 10.0, 20.0, 40.0, 80.0), _llv))
register(Knob("jacobian", "lam", "λ", R.LAM_ADDITIVE, (0.0, 0.5, 1.0, 2.0, 4.0), _jacobian, R.JACOBIAN_LAYER))
register(Knob("lqr", "q", "q", R.Q, (0.0, 1.0, 10.0, 100.0, 1000.0), _lqr))
