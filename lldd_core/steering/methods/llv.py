"""LLV steering: the surrogate's minimum-energy schedule for a readout shift ``Δy``, ``u_l v_l`` at every
layer, at the last position of every forward (:mod:`lldd_core.analysis.control`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...analysis.control import population_gains, schedules
from ...forward.interventions import AddVectors
from ...models.loading import ModelHandle
from ..compare import SteeringPlan
from .base import SteeringContext, SteeringMethod, option


@dataclass(frozen=True)
class LLVParams:
    """The target shift ``dy`` (``0``: the unsteered text) and the surrogate's reduced ``order``."""

    dy: float = option(1.0, "target readout shift Δy", range=R.DY)
    order: int = option(32, "reduced order of the surrogate", range=R.ORDER)


def llv_schedule(directions: torch.Tensor, u: np.ndarray) -> AddVectors:
    """``u_l v_l`` at every layer with a non-zero ``u_l``, at the last position."""
    return AddVectors({l: float(u[l]) * directions[l] for l in range(len(u)) if u[l] != 0}, "last")


class LLV(SteeringMethod):
    name = "llv"
    label = "LLV"
    help = ("Adds u_l·v_l at every layer, the least-energy schedule the LLV surrogate predicts will move the "
            "readout by Δy.")
    Params = LLVParams

    def check(self, params: LLVParams, n_layers: int, d: int) -> LLVParams:
        return LLVParams(dy=R.DY.check(params.dy), order=R.ORDER.check(params.order, hi=d))

    def cache_params(self, params: LLVParams) -> dict[str, Any]:
        return {"dy": float(params.dy), "order": int(params.order)}

    def plan(self, handle: ModelHandle, params: LLVParams, context: SteeringContext) -> SteeringPlan:
        setup, L = context.setup, handle.n_layers
        h = population_gains(setup, params.order, "krylov", context.seed)
        u = schedules(h, setup.layers, L, params.dy, context.seed)["llv"]
        return SteeringPlan(self.name, [llv_schedule(setup.directions, u)], context.readout(L), u,
                            {"dy": float(params.dy), "order": params.order})
