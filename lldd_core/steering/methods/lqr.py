"""LQR steering: feedback towards the concept's setpoints with the operating prompts' mean Jacobians as the
dynamics (:mod:`lldd_core.linalg.lqr`), at every layer and every generated token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import ranges as R
from ...errors import InputError
from ...forward.interventions import LQRFeedback
from ...linalg.lqr import riccati_gains, setpoints
from ...models.loading import ModelHandle
from ..compare import SteeringPlan
from .base import SteeringContext, SteeringMethod, option


@dataclass(frozen=True)
class LQRParams:
    """The setpoint scale ``lam`` (``None``: 1) and the weights ``q`` (state), ``r`` (control), ``qf`` (terminal)."""

    lam: float | None = option(None, f"setpoint scale β_k = λ||E_k||, {R.LAM_LQR.describe()}", range=R.LAM,
                               default_text="1")
    q: float = option(10.0, "state weight", range=R.Q)
    r: float = option(10.0, "control weight", range=R.R)
    qf: float = option(1.0, "terminal state weight", range=R.QF)


def lqr_feedback(A: torch.Tensor, differences: torch.Tensor, lam: float, q: float, r: float, qf: float) -> LQRFeedback:
    """LQR feedback for setpoints ``β_k = λ ||E_k||`` along ``v_k = E_k / ||E_k||`` (``k = 0..L-1``)."""
    L = A.shape[0]
    v, beta = setpoints(differences[:L].double(), lam)
    K = riccati_gains(A.double().cpu(), q, r, qf)
    Kv = torch.einsum("kij,kj->ki", K, v.cpu())
    return LQRFeedback(v.to(A), beta.to(A), Kv.to(A))


class LQR(SteeringMethod):
    name = "lqr"
    label = "LQR"
    help = ("Feedback control: at every layer, measures the state's distance to the concept setpoint and "
            "adds the LQR-optimal correction K_k e_k.")
    Params = LQRParams

    def check(self, params: LQRParams, n_layers: int, d: int) -> LQRParams:
        return LQRParams(lam=R.lam_range(self.name).check_optional(params.lam), q=R.Q.check(params.q),
                         r=R.R.check(params.r), qf=R.QF.check(params.qf))

    def cache_params(self, params: LQRParams) -> dict[str, Any]:
        return {"lam": params.lam, "q": float(params.q), "r": float(params.r), "qf": float(params.qf)}

    def pieces(self, params: LQRParams) -> dict[str, dict[str, Any]]:
        return {"mean_jacobians": {}}

    def plan(self, handle: ModelHandle, params: LQRParams, context: SteeringContext) -> SteeringPlan:
        if context.mean_jacobians is None:
            raise InputError("LQR needs the operating prompts' mean Jacobians.")
        lam = 1.0 if params.lam is None else params.lam
        fb = lqr_feedback(context.mean_jacobians, context.setup.differences, lam, params.q, params.r, params.qf)
        return SteeringPlan(self.name, [fb], context.readout(handle.n_layers), np.zeros(0),
                            {"lam": lam, "q": params.q, "r": params.r, "qf": params.qf})
