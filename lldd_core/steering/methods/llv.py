"""LLV steering: the surrogate's minimum-energy schedule for a readout shift ``Δy``, ``u_l v_l`` added to
``x_l`` at the steering layers, at the last position of every forward (:mod:`lldd_core.analysis.control`).

The schedule's *shape* is the surrogate's, ``u ∝ h`` on the steering layers ``S`` (least norm with
``Σ_{l∈S} h_l u_l = Δy``); its *amplitude* is set by the mean exact gains ``g_l`` so that the first-order
shift ``Σ_l g_l u_l`` is ``Δy`` (the reduced-order ``h`` misjudges it: on the demo model ``h_1`` is 9 % above
``g_1``, which left the schedule short of flipping reviews).

The steering layers are those of :func:`~lldd_core.steering.calibrate.steering_layers`: the trusted layers up
to the exact gain's peak (flagged layers' ``v_l`` is noise: on GPT-2 ``x_0`` it carries 0.6 % of the state;
past the peak a push writes the concept's output tokens instead of changing the text). The default ``Δy`` is
calibrated (:mod:`lldd_core.steering.calibrate`): ``shift`` class-mean distances ``‖E_L‖``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...analysis.control import population_gains, schedules
from ...errors import InputError
from ...forward.interventions import AddVectors
from ...models.loading import ModelHandle
from ..calibrate import mean_exact_gains, separation, shift_option, steering_layers
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


def least_energy(h: np.ndarray, gains: np.ndarray, layers: list[int], n_layers: int, dy: float) -> np.ndarray:
    """``u`` ``[L]``: the surrogate's least-energy shape ``∝ h`` on ``layers``, scaled so that ``gains · u = dy``."""
    u = schedules(h, layers, n_layers, dy)["llv"]
    first_order = float(np.dot(gains, u))
    if dy == 0:
        return u
    if not np.all(np.isfinite(u)) or first_order == 0:
        raise InputError(f"The concept's gains at layers {layers} are zero: no LLV schedule reaches Δy = {dy:g}.")
    return u * (dy / first_order)


def llv_schedule(directions: torch.Tensor, u: np.ndarray) -> AddVectors:
    """``u_l v_l`` at every layer with a non-zero ``u_l``, at the last position."""
    return AddVectors({l: float(u[l]) * directions[l] for l in range(len(u)) if u[l] != 0}, "last")


class LLV(SteeringMethod):
    name = "llv"
    label = "LLV"
    help = ("Adds u_l·v_l to x_l at the trusted layers up to the gain's peak: the LLV surrogate's least-energy "
            "schedule, scaled so that the exact gains predict a readout shift of Δy.")
    Params = LLVParams

    def check(self, params: LLVParams, n_layers: int, d: int) -> LLVParams:
        return LLVParams(dy=R.DY.check_optional(params.dy), order=R.ORDER.check(params.order, hi=d),
                         shift=R.SHIFT.check(params.shift))

    def cache_params(self, params: LLVParams) -> dict[str, Any]:
        # "layers": the trusted layers up to the gain peak, "amplitude": set by the exact gains (new entries)
        out: dict[str, Any] = {"dy": None if params.dy is None else float(params.dy), "order": int(params.order),
                               "layers": "up-to-peak", "amplitude": "exact-gains"}
        if params.dy is None:
            out["shift"] = float(params.shift)
        return out

    def plan(self, handle: ModelHandle, params: LLVParams, context: SteeringContext) -> SteeringPlan:
        setup, L = context.setup, handle.n_layers
        h = population_gains(setup, params.order, "krylov", context.seed)  # memoized on the setup
        gains = mean_exact_gains(setup)
        layers = steering_layers(setup, gains)
        where = ", ".join(f"x_{layer}" for layer in layers)
        record: dict[str, Any] = {}
        dy = params.dy
        if dy is None:
            sep = separation(setup)
            dy = params.shift * sep
            record = {"calibrated": True, "shift": params.shift, "separation": sep,
                      "rule": f"Δy = {dy:.3g} = {params.shift:g} × ‖E_{L}‖ ({sep:.3g}): the predicted readout shift "
                              f"at x_{L}; least-energy schedule at {where} (the trusted layers up to the gain's peak)"}
        u = least_energy(h, gains, layers, L, float(dy))
        return SteeringPlan(self.name, [llv_schedule(setup.directions, u)], context.readout(L), u,
                            {"dy": float(dy), "order": params.order, "layers": layers,
                             "gains": [float(gains[layer]) for layer in layers],
                             "surrogate_gains": [float(h[layer]) for layer in layers], **record})
