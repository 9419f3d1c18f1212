"""LQR steering: feedback towards the concept's setpoints with the operating prompts' mean Jacobians as the
dynamics (:mod:`lldd_core.linalg.lqr`), at every generated token.

Defaults (the calibrated recipe): the feedback corrects block ``k``'s *input* ``x_k`` from the error read
there (``at="input"``: ``B_k = A_k`` at the steering layers, ``B_k = 0`` elsewhere, so the Riccati gains are
optimal for controls at those layers only), at the steering layers of
:func:`~lldd_core.steering.calibrate.steering_layers` (the trusted ``x_l`` up to the exact gain's peak, where
additive and LLV steer too), towards the target class's mean ``β_k = v_kᵀμ_1`` (``setpoint="class-mean"``
at ``λ = 1``), with the state weight ten times the control weight (``q = 10``, ``r = 1``: each correction
closes most of the error it reads).

``at="output"`` with ``setpoint="scaled"`` is the reference recipe: ``u_k`` added to block ``k``'s output at
every layer ``k = 0..L-1`` (``B = I``), setpoints ``β_k = λ‖E_k‖``. On the demo model it pushes mostly at
``x_2..x_4``, where the push writes verdict tokens after a negative verb ("returned it. Worth every penny.").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...analysis.gains import GainsSetup
from ...errors import InputError
from ...forward.interventions import LQR_AT, LQRFeedback
from ...linalg.lqr import class_mean_setpoints, riccati_gains, setpoints
from ...models.loading import ModelHandle
from ..calibrate import mean_exact_gains, steering_layers
from ..compare import SteeringPlan
from .base import SteeringContext, SteeringMethod, option

SETPOINTS = ("class-mean", "scaled")


@dataclass(frozen=True)
class LQRParams:
    """The setpoint scale ``lam`` (``None``: 1), the weights ``q`` (state), ``r`` (control), ``qf`` (terminal),
    the ``setpoint`` rule and where the feedback writes (``at``); module doc."""

    lam: float | None = option(None, f"setpoint scale: β_k = v_k·(μ_1+μ_0)/2 + λ||E_k||/2 (class-mean) or "
                               f"β_k = λ||E_k|| (scaled), {R.LAM_LQR.describe()}", range=R.LAM,
                               default_text="1 (class-mean: the target class's mean)")
    q: float = option(10.0, "state weight", range=R.Q)
    r: float = option(1.0, "control weight", range=R.R)
    qf: float = option(1.0, "terminal state weight", range=R.QF)
    setpoint: str = option("class-mean", "the setpoints: the class means' midpoint plus λ half-separations, or "
                           "the reference's λ||E_k||", choices=SETPOINTS)
    at: str = option("input", "correct block k's input x_k at the trusted layers up to the gain peak, or (the "
                     "reference) block k's output at every layer", choices=LQR_AT)


def lqr_feedback(A: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, layers: Sequence[int], q: float, r: float,
                 qf: float, at: str = "output") -> LQRFeedback:
    """LQR feedback towards ``β_k`` along ``v_k`` (``[L, d]``, ``[L]``) acting at ``layers`` only.

    ``at="input"``: ``B_k = A_k`` at ``layers`` and ``0`` elsewhere; ``at="output"``: ``B = I`` with the
    gains of other layers dropped (the reference acts at every layer).
    """
    L = A.shape[0]
    A64 = A.double().cpu()
    if at == "input":
        zero = torch.zeros_like(A64[0])
        K = riccati_gains(A64, q, r, qf, B=[A64[k] if k in layers else zero for k in range(L)])
    else:
        K = riccati_gains(A64, q, r, qf)
    Kv = torch.einsum("kij,kj->ki", K, v.double().cpu())
    Kv[[k for k in range(L) if k not in layers]] = 0.0
    return LQRFeedback(v.to(A), beta.to(A), Kv.to(A), at)


def lqr_setpoints(setup: GainsSetup, setpoint: str, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v_k, β_k)`` for ``k = 0..L-1`` by the ``setpoint`` rule (module doc)."""
    L = setup.handle.n_layers
    if setpoint == "scaled":
        return setpoints(setup.differences[:L].double(), lam)
    if setup.class_means is None:
        raise InputError("The class-mean setpoint needs the concept's class means: choose the scaled setpoint.")
    return class_mean_setpoints(setup.class_means[:, :L].double(), lam)


class LQR(SteeringMethod):
    name = "lqr"
    label = "LQR"
    help = ("Feedback control: measures the state's distance to the concept setpoint (the target class's mean) and "
            "adds the LQR-optimal correction K_k e_k, at the trusted layers up to the gain's peak.")
    Params = LQRParams

    def check(self, params: LQRParams, n_layers: int, d: int) -> LQRParams:
        if params.setpoint not in SETPOINTS:
            raise InputError(f"The LQR setpoint must be one of {', '.join(SETPOINTS)}; got {params.setpoint!r}.")
        if params.at not in LQR_AT:
            raise InputError(f"LQR acts at one of {', '.join(LQR_AT)}; got {params.at!r}.")
        return LQRParams(lam=R.lam_range(self.name).check_optional(params.lam), q=R.Q.check(params.q),
                         r=R.R.check(params.r), qf=R.QF.check(params.qf), setpoint=params.setpoint, at=params.at)

    def cache_params(self, params: LQRParams) -> dict[str, Any]:
        out: dict[str, Any] = {"lam": params.lam, "q": float(params.q), "r": float(params.r), "qf": float(params.qf)}
        # the reference recipe keeps the keys of before; the calibrated one adds what it reads
        if (params.setpoint, params.at) != ("scaled", "output"):
            out.update(setpoint=params.setpoint, at=params.at)
        return out

    def pieces(self, params: LQRParams) -> dict[str, dict[str, Any]]:
        return {"mean_jacobians": {}}

    def plan(self, handle: ModelHandle, params: LQRParams, context: SteeringContext) -> SteeringPlan:
        if context.mean_jacobians is None:
            raise InputError("LQR needs the operating prompts' mean Jacobians.")
        setup, L = context.setup, handle.n_layers
        lam = 1.0 if params.lam is None else params.lam
        v, beta = lqr_setpoints(setup, params.setpoint, lam)
        layers = steering_layers(setup, mean_exact_gains(setup)) if params.at == "input" else list(range(L))
        fb = lqr_feedback(context.mean_jacobians, v, beta, layers, params.q, params.r, params.qf, params.at)
        record: dict[str, Any] = {"setpoint": params.setpoint, "at": params.at, "layers": layers}
        if params.at == "input":
            where = ", ".join(f"x_{layer}" for layer in layers)
            target = "the target class's mean" if (params.setpoint, lam) == ("class-mean", 1.0) else "the setpoint"
            record["rule"] = (f"feedback at {where} (the trusted layers up to the gain's peak) towards {target}, "
                              f"q = {params.q:g}, r = {params.r:g}")
        return SteeringPlan(self.name, [fb], context.readout(L), np.zeros(0),
                            {"lam": lam, "q": params.q, "r": params.r, "qf": params.qf, **record})
