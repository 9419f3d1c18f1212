"""Additive concept steering: ``α v_l`` added at the chosen layer(s), at the last position or every position.

``v_l`` is the unit class-mean direction of the concept at block input ``x_l``; the default ``α`` is one
class-mean distance ``‖E_l‖`` at each layer (the concept's own scale).
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
from ..compare import SteeringPlan
from ..pieces import default_layer
from .base import SteeringContext, SteeringMethod, check_layers, option


@dataclass(frozen=True)
class AdditiveParams:
    """Where and how much to add: ``layers`` (``None``: two thirds of the depth), ``strength`` ``α``
    (``None``: ``‖E_l‖`` at each layer) and ``positions`` (:data:`~lldd_core.forward.interventions.POSITIONS`)."""

    layers: Sequence[int] | None = option(
        None, f"layer(s) l, comma-separated: the residual stream x_l (block l's input), each {R.STEER_LAYER.describe()}", range=R.STEER_LAYERS,
        many=True, default_text="two thirds of the depth")
    strength: float | None = option(None, "α along the unit direction v_l", range=R.STRENGTH,
                                    default_text="one class-mean distance ||E_l|| at the layer")
    positions: str = option("last", "where to add α v_l", choices=("last", "all"))


class Additive(SteeringMethod):
    name = "additive"
    label = "additive"
    help = "Adds α·v_l (the concept's class-mean direction) to the residual stream at the chosen layer(s)."
    Params = AdditiveParams

    def check(self, params: AdditiveParams, n_layers: int, d: int) -> AdditiveParams:
        if params.positions not in POSITIONS:
            raise InputError(f"Positions must be one of {', '.join(POSITIONS)}; got {params.positions!r}.")
        return AdditiveParams(layers=check_layers(params.layers, R.STEER_LAYER, n_layers),
                              strength=R.STRENGTH.check_optional(params.strength), positions=params.positions)

    def cache_params(self, params: AdditiveParams) -> dict[str, Any]:
        return {"layers": None if params.layers is None else list(params.layers),
                "strength": None if params.strength is None else float(params.strength),
                "positions": params.positions}

    def plan(self, handle: ModelHandle, params: AdditiveParams, context: SteeringContext) -> SteeringPlan:
        setup, L = context.setup, handle.n_layers
        layers = [default_layer(L)] if params.layers is None else list(params.layers)
        if 0 in layers and 0 not in setup.layers:  # the dataset's texts give no direction at x_0
            raise InputError(f"Layers must lie in {min(setup.layers)}..{L - 1} for this model and dataset; got {layers}.")
        # default strength: one class-mean distance ||E_l|| at each layer (the concept's own scale)
        amounts = {l: float(setup.differences[l].norm()) if params.strength is None else float(params.strength)
                   for l in layers}
        schedule = np.zeros(L)
        for l, a in amounts.items():
            schedule[l] = a
        vectors = AddVectors({l: a * setup.directions[l] for l, a in amounts.items()}, params.positions)
        return SteeringPlan(self.name, [vectors], context.readout(L), schedule,
                            {"layers": layers, "strength": [amounts[l] for l in layers], "positions": params.positions})
