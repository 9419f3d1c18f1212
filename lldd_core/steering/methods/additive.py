"""Additive concept steering: ``α v_l`` added at the chosen layer(s), at the last position or every position.

``v_l`` is the unit class-mean direction of the concept at the residual stream ``x_l`` (block ``l`` reads
``x_l``; "steer at layer ``l``" adds to ``x_l``). Defaults are calibrated (:mod:`lldd_core.steering.calibrate`):
the layer is the trusted one of largest exact gain ``g_l``, and ``α = shift · ‖E_L‖ / Σ_l g_l``, so that the
*predicted* readout shift at ``x_L`` is ``shift`` class-mean distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import ranges as R
from ...errors import InputError
from ...forward.interventions import POSITIONS, AddVectors
from ...models.loading import ModelHandle
from ..calibrate import calibrate, shift_option
from ..compare import SteeringPlan
from .base import SteeringContext, SteeringMethod, check_layers, option


@dataclass(frozen=True)
class AdditiveParams:
    """Where and how much to add: ``layers`` (``None``: the trusted layer of largest gain), ``strength`` ``α``
    (``None``: calibrated for ``shift``), ``positions`` (:data:`~lldd_core.forward.interventions.POSITIONS`)
    and ``shift``, the calibration's target in class-mean distances (read only when ``strength`` is ``None``)."""

    layers: Sequence[int] | None = option(
        None, f"residual-stream layer(s) x_l, comma-separated, each {R.STEER_LAYER.describe()}",
        range=R.STEER_LAYERS, many=True, default_text="the layer of largest gain")
    strength: float | None = option(None, "α along the unit direction v_l", range=R.STRENGTH,
                                    default_text="calibrated: shift · ||E_L|| / gain")
    positions: str = option("last", "where to add α v_l", choices=("last", "all"))
    shift: float = shift_option()


class Additive(SteeringMethod):
    name = "additive"
    label = "additive"
    help = "Adds α·v_l (the concept's class-mean direction) to the residual stream x_l at the chosen layer(s)."
    Params = AdditiveParams

    def check(self, params: AdditiveParams, n_layers: int, d: int) -> AdditiveParams:
        if params.positions not in POSITIONS:
            raise InputError(f"Positions must be one of {', '.join(POSITIONS)}; got {params.positions!r}.")
        return AdditiveParams(layers=check_layers(params.layers, R.STEER_LAYER, n_layers),
                              strength=R.STRENGTH.check_optional(params.strength), positions=params.positions,
                              shift=R.SHIFT.check(params.shift))

    def cache_params(self, params: AdditiveParams) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": None if params.layers is None else list(params.layers),
                               "strength": None if params.strength is None else float(params.strength),
                               "positions": params.positions}
        # what the calibrated defaults read (absent when both are given: those keys are as before)
        if params.layers is None:
            out["layer_rule"] = "largest-gain"
        if params.strength is None:
            out["shift"] = float(params.shift)
        return out

    def plan(self, handle: ModelHandle, params: AdditiveParams, context: SteeringContext) -> SteeringPlan:
        setup, L = context.setup, handle.n_layers
        if params.layers is not None and 0 in params.layers and 0 not in setup.layers:
            raise InputError(f"Layers must lie in {min(setup.layers)}..{L - 1} for this model and dataset; "
                             f"got {list(params.layers)}.")
        record: dict[str, Any] = {}
        if params.layers is None or params.strength is None:
            cal = calibrate(setup, params.layers, params.shift)
            layers = list(cal.layers)
            if params.strength is None:
                record = {**cal.record(), "rule": cal.describe()}
        else:
            layers = list(params.layers)
        alpha = cal.amount if params.strength is None else float(params.strength)
        schedule = np.zeros(L)
        schedule[layers] = alpha
        vectors = AddVectors({layer: alpha * setup.directions[layer] for layer in layers}, params.positions)
        return SteeringPlan(self.name, [vectors], context.readout(L), schedule,
                            {"layers": layers, "strength": [alpha] * len(layers), "positions": params.positions,
                             **record})
