"""Jacobian steering: a steering phrase's detached-Jacobian operator applied to the new text at ``x_ℓ``
(:class:`~lldd_core.forward.interventions.JacobianSteering`; ``blend``: the paper's ``λ`` blend;
``additive``: the reference implementation's norm-matched addition; ``reference``: its recipe exactly).

It needs no concept dataset (with one, the page and the CLI also show the concept readout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...errors import InputError
from ...forward.interventions import JACOBIAN_VARIANTS, JacobianSteering
from ...models.loading import ModelHandle
from ..compare import SteeringPlan
from ..pieces import DEFAULT_LAMBDA, analyze_steering_jacobian, default_jacobian_layer
from .base import SteeringContext, SteeringMethod, check_layers, option

LAM_HELP = (f"with the blend variant h ← λh + (1-λ)a, {R.LAM_BLEND.describe()} (1 = unsteered; default 0.5), with "
            f"the additive variant h ← h + λ·a·||h||/(2||a||), {R.LAM_ADDITIVE.describe()} (0 = unsteered)")


@dataclass(frozen=True)
class JacobianParams:
    """The phrase ``steer_text``, the layer (one; ``None``: two thirds of the depth), ``lam`` ``λ``
    (``None``: :data:`~lldd_core.steering.pieces.DEFAULT_LAMBDA` of the variant) and the ``variant``."""

    steer_text: str = option("", "the steering phrase, e.g. 'The Golden Gate'")
    layers: Sequence[int] | None = option(None, f"layer l: the phrase's Jacobian x_0 → x_l steers at x_l (block l-1's output), "
                                          f"{R.JACOBIAN_LAYER.describe()}", range=R.STEER_LAYERS,
                                          many=True, default_text="two thirds of the depth")
    lam: float | None = option(None, LAM_HELP, range=R.LAM)
    variant: str = option("blend", "the paper's blend or the reference implementation's norm-matched addition",
                          choices=("blend", "additive"))


class Jacobian(SteeringMethod):
    name = "jacobian"
    label = "Jacobian"
    help = ("Maps the new text's inputs through the steering phrase's detached Jacobian and blends "
            "(or norm-matched adds) the result into the stream at one layer.")
    Params = JacobianParams
    needs_dataset = False

    def check(self, params: JacobianParams, n_layers: int, d: int) -> JacobianParams:
        if params.variant not in JACOBIAN_VARIANTS:
            raise InputError(f"Unknown Jacobian variant {params.variant!r}: choose one of {', '.join(JACOBIAN_VARIANTS)}.")
        layers = check_layers(params.layers, R.JACOBIAN_LAYER, n_layers)
        if layers is not None and len(layers) != 1:
            raise InputError(f"The Jacobian method steers at one layer; got {list(layers)}.")
        if not str(params.steer_text).strip():
            raise InputError("The Jacobian method needs a steering phrase (e.g. 'The Golden Gate').")
        lam = R.lam_range(self.name, params.variant).check_optional(params.lam)
        return JacobianParams(steer_text=str(params.steer_text), layers=layers, lam=lam, variant=params.variant)

    def cache_params(self, params: JacobianParams) -> dict[str, Any]:
        # "operator": it adds the phrase's bias channel now: new entries, not those of before
        return {"layers": None if params.layers is None else list(params.layers), "steer_text": params.steer_text,
                "lam": params.lam, "variant": params.variant, "operator": "affine"}

    def pieces(self, params: JacobianParams) -> dict[str, dict[str, Any]]:
        layer = None if params.layers is None else params.layers[0]
        return {"steering_jacobian": {"steer_text": params.steer_text, "layer": layer, "variant": params.variant}}

    def plan(self, handle: ModelHandle, params: JacobianParams, context: SteeringContext) -> SteeringPlan:
        L, variant = handle.n_layers, params.variant
        layer = default_jacobian_layer(L, variant) if params.layers is None else params.layers[0]
        lam = DEFAULT_LAMBDA[variant] if params.lam is None else params.lam
        reference = variant == "reference"
        J = context.steering_jacobian
        if J is None:
            J = analyze_steering_jacobian(handle, params.steer_text, layer, final_norm=reference)
        if J.layer != layer or J.final_norm != reference:
            raise ValueError(f"the steering Jacobian is of x_{J.layer} (final norm {J.final_norm}); "
                             f"{variant} at layer {layer} needs final norm {reference}")
        op = JacobianSteering(torch.as_tensor(J.J), layer, lam, variant, b=None if reference else torch.as_tensor(J.b))
        return SteeringPlan(self.name, [op], context.readout(L), np.zeros(0),
                            {"steer_text": params.steer_text, "layer": layer, "lam": lam, "variant": variant})
