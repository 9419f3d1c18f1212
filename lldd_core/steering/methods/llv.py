"""LLV steering: the surrogate's minimum-energy schedule for a readout shift ``Δy``, ``u_l v_l`` added to
``x_l`` at every trusted layer, at the last position of every forward (:mod:`lldd_core.analysis.control`).

The default ``Δy`` is calibrated (:mod:`lldd_core.steering.calibrate`): ``shift`` class-mean distances
``‖E_L‖``. Layers whose concept direction is flagged as too weak get no control (their ``v_l`` is noise:
on GPT-2 ``x_0`` it carries 0.6 % of the state, and the least-energy schedule would still put a share there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...analysis.control import population_gains, schedules
from ...forward.interventions import AddVectors
from ...models.loading import ModelHandle
from ..calibrate import separation, shift_option, trusted_layers
from ..compare import SteeringPlan
from .base import SteeringContext, SteeringMethod, option


@dataclass(frozen=True)
class LLVParams:
    """The target shift ``dy`` (``None``: ``shift · ‖E_L‖``; ``0``: the unsteered text), the surrogate's
    reduced ``order`` and ``shift``, the calibration's target in class-mean distances."""

    dy: float | None = option(None, "target readout shift Δy", range=R.DY,
                              default_text="calibrated: shift · ||E_L||")
    order: int = option(32, "reduced order of the surrogate", range=R.ORDER)
    shift: float = shift_option()


def llv_schedule(directions: torch.Tensor, u: np.ndarray) -> AddVectors:
    """``u_l v_l`` at every layer with a non-zero ``u_l``, at the last position."""
    return AddVectors({l: float(u[l]) * directions[l] for l in range(len(u)) if u[l] != 0}, "last")


class LLV(SteeringMethod):
    name = "llv"
    label = "LLV"
    help = ("Adds u_l·v_l to x_l at every trusted layer, the least-energy schedule the LLV surrogate predicts will "
            "move the readout by Δy.")
    Params = LLVParams

    def check(self, params: LLVParams, n_layers: int, d: int) -> LLVParams:
        return LLVParams(dy=R.DY.check_optional(params.dy), order=R.ORDER.check(params.order, hi=d),
                         shift=R.SHIFT.check(params.shift))

    def cache_params(self, params: LLVParams) -> dict[str, Any]:
        # "layers": flagged layers get no control now (entries of before put some there)
        out: dict[str, Any] = {"dy": None if params.dy is None else float(params.dy), "order": int(params.order),
                               "layers": "trusted"}
        if params.dy is None:
            out["shift"] = float(params.shift)
        return out

    def plan(self, handle: ModelHandle, params: LLVParams, context: SteeringContext) -> SteeringPlan:
        setup, L = context.setup, handle.n_layers
        h = population_gains(setup, params.order, "krylov", context.seed)
        layers = trusted_layers(setup)
        record: dict[str, Any] = {}
        dy = params.dy
        if dy is None:
            sep = separation(setup)
            dy = params.shift * sep
            record = {"calibrated": True, "shift": params.shift, "separation": sep,
                      "rule": f"Δy = {dy:.3g} = {params.shift:g} × ‖E_{L}‖ ({sep:.3g}): the predicted readout shift "
                              f"at x_{L}"}
        u = schedules(h, layers, L, dy, context.seed)["llv"]
        return SteeringPlan(self.name, [llv_schedule(setup.directions, u)], context.readout(L), u,
                            {"dy": float(dy), "order": params.order, "layers": layers, **record})
