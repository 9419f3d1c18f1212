"""Calibrated steering strengths: the amount that makes the *predicted* readout shift reach a stated target.

The concept's own scale is the class-mean separation along the readout, ``‖E_L‖ = v_Lᵀ(μ_1 − μ_0)`` at
``x_L`` (the distance between the two class means as the readout sees them). A target of ``c`` class-mean
distances is the readout shift ``Δy = c · ‖E_L‖``: ``c = 0.5`` moves a text at one class mean onto the
decision boundary (the midpoint), ``c = 1`` onto the other mean.

The gain of an injection at ``x_l`` is the readout functional's derivative along the concept direction,
``g_l = ∂(v_Lᵀ x_L)/∂x_l · v_l`` (the *exact* gain curve of :mod:`lldd_core.analysis.gains`), averaged over
the first :data:`CALIBRATION_PROMPTS` operating prompts. To first order ``α v_l`` added at ``x_l`` moves the
readout by ``α g_l``; the same ``α`` at several layers by ``α Σ_l g_l``, so the calibrated additive strength is
``α = Δy / Σ_l g_l``.

Layers whose concept direction is too weak to trust (``GainsSetup.flagged_layers``, e.g. GPT-2's ``x_0``
where only position embeddings differ) never get a calibrated injection: their ``v_l`` is noise.

The default *steering layers* (:func:`steering_layers`) are the trusted layers up to and including the one of
largest mean exact gain: past the gain's peak the concept direction increasingly carries what the model is
about to write (on the demo model, the verdict tokens), so a push there writes "Worth every penny." after
a negative verb instead of changing the verb. Measured on ``demo:gpt2-small`` (26 held-out negative reviews):
a push at ``x_1`` (its peak) alone flips all of them, at ``x_2`` or ``x_3`` alone at most 19 at any strength
before the text loops. Additive steering takes the peak layer itself, LLV its least-energy schedule over
these layers, LQR its feedback at them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import ranges as R
from ..analysis.gains import GainsSetup
from ..errors import InputError
from ..forward.depth import prompt_context
from ..linalg.agreement import kept_layers
from .methods.base import option

#: The default target, in class-mean distances: half of one, the distance from a class mean to the boundary.
#: On the demo model the verdict of negative reviews flips from 0.5 on; from 0.75 the text starts to loop.
DEFAULT_SHIFT = 0.5
#: Operating prompts the mean exact gains are taken over (one forward and one backward each).
CALIBRATION_PROMPTS = 32

SHIFT_HELP = "target of the calibrated default: the predicted readout shift in class-mean distances ||E_L||"


def shift_option() -> float:
    """The ``shift`` field every calibrated method declares alike (the command line shares ``--shift``)."""
    return option(DEFAULT_SHIFT, SHIFT_HELP, range=R.SHIFT)


def trusted_layers(setup: GainsSetup) -> list[int]:
    """The injection layers with a concept direction that is not flagged as too weak (module doc)."""
    keep = kept_layers(setup.layers, setup.flagged_layers)
    kept = [int(layer) for layer, k in zip(setup.layers, keep) if k]
    return kept or list(setup.layers)


def separation(setup: GainsSetup) -> float:
    """``‖E_L‖``: the class-mean distance along the readout ``v_L``."""
    return float(setup.differences[setup.handle.n_layers].norm())


def mean_exact_gains(setup: GainsSetup, n_prompts: int = CALIBRATION_PROMPTS) -> np.ndarray:
    """``[L]`` the exact gains ``∂(v_Lᵀ x_L)/∂x_l · v_l`` averaged over the first ``n_prompts`` operating prompts
    (computed once per setup)."""
    return setup.memoized(("exact-gains", n_prompts), lambda: _mean_exact_gains(setup, n_prompts))


def _mean_exact_gains(setup: GainsSetup, n_prompts: int) -> np.ndarray:
    h = setup.handle
    L = h.n_layers
    V = setup.directions
    rows = [prompt_context(h.model, h.adapter, ids).exact_gains(V, V[L]) for ids in setup.operating[:n_prompts]]
    if not rows:
        raise InputError("Calibrating the steering strength needs operating prompts: enlarge the operating split.")
    return torch.stack(rows).mean(0).detach().double().cpu().numpy()


@dataclass(frozen=True)
class Calibration:
    """How a calibrated amount was chosen: ``amount = target / Σ gains`` with ``target = shift · separation``."""

    shift: float  # c, in class-mean distances
    separation: float  # ‖E_L‖
    layers: tuple[int, ...]  # where the amount is injected
    gains: tuple[float, ...]  # g_l at those layers
    n_layers: int  # L (the readout is at x_L)

    @property
    def target(self) -> float:
        """``Δy = c · ‖E_L‖``."""
        return self.shift * self.separation

    @property
    def amount(self) -> float:
        """``α = Δy / Σ_l g_l`` (NaN when the gains sum to zero: no amount reaches the target)."""
        total = float(sum(self.gains))
        return self.target / total if total != 0 else float("nan")

    def record(self) -> dict:
        """The entries a result's ``params`` keep of it (plain numbers)."""
        return {"calibrated": True, "shift": self.shift, "target_dy": self.target, "separation": self.separation,
                "gains": list(self.gains)}

    def describe(self, symbol: str = "α") -> str:
        """``α = 11.5 chosen so the predicted readout shift at x_4 is 18.4 = 0.5 × ‖E_4‖ (36.8), gain 1.6 at x_1``."""
        where = ", ".join(f"{g:.3g} at x_{layer}" for layer, g in zip(self.layers, self.gains))
        return (f"{symbol} = {self.amount:.3g} chosen so the predicted readout shift at x_{self.n_layers} is "
                f"{self.target:.3g} = {self.shift:g} × ‖E_{self.n_layers}‖ ({self.separation:.3g}); gain {where}")


def steering_layers(setup: GainsSetup, gains: np.ndarray) -> list[int]:
    """The trusted layers up to and including the one of largest gain (module doc): where the defaults steer."""
    trusted = trusted_layers(setup)
    peak = best_layer(gains, trusted)
    return [layer for layer in trusted if layer <= peak]


def best_layer(gains: np.ndarray, layers: Sequence[int]) -> int:
    """The layer of ``layers`` with the largest gain (the least ``α`` reaches a target there)."""
    return int(max(layers, key=lambda layer: float(gains[layer])))


def calibrate(setup: GainsSetup, layers: Sequence[int] | None, shift: float,
              gains: np.ndarray | None = None) -> Calibration:
    """The calibration of an injection at ``layers`` (``None``: the trusted layer of largest gain) for ``shift``."""
    gains = mean_exact_gains(setup) if gains is None else gains
    chosen = [best_layer(gains, trusted_layers(setup))] if layers is None else list(layers)
    cal = Calibration(float(shift), separation(setup), tuple(chosen), tuple(float(gains[layer]) for layer in chosen),
                      setup.handle.n_layers)
    if not np.isfinite(cal.amount):
        raise InputError(f"The concept's gains at layers {chosen} sum to zero: no strength reaches the target; "
                         "choose other layers or give the strength.")
    return cal
