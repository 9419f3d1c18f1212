"""Multi-layer concept control: minimum-energy LLV schedules and heuristics, validated in the full model.

Scalar controls ``u_l`` along the concept directions ``v_l`` (injection ``x_l <- x_l + u_l v_l`` at
the last token, before block ``l``) move the readout ``y = v_L^T x_L`` by ``δy ≈ h^T u`` to first
order, with ``h`` the LLV surrogate's predicted gains (population model of the operating prompts,
:mod:`lldd_core.analysis.gains`). For a target shift ``Δy``:

* ``llv``: the minimum-energy schedule ``u* = Δy h / ||h||²`` (least-norm solution of ``h^T u = Δy``);
* ``uniform``: the same ``u`` at every layer, ``Δy / Σ h``;
* ``last`` / ``middle`` / ``early``: one layer, ``Δy / h_l`` (layers ``L-1``, ``L//2``, ``L//4``
  or the first layer with a direction);
* ``random``: one seeded random layer.

Each schedule ``s`` (which reaches ``Δy`` exactly in the surrogate) is then scaled in the full model:
the amplitude ``a`` with ``|Δ(a s) - Δy| <= tol |Δy|``, where ``Δ`` is the mean readout change over
the evaluation prompts, is found by bracketing and batched bisection; its energy is ``a² ||s||²``.
A schedule whose bracket cannot be closed within ``MAX_SCALE`` times the surrogate's amplitude (or
whose layer has a zero gain) is reported as not reached.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..concepts.data import ConceptData
from ..forward.depth import PromptContext
from ..models.loading import ModelHandle
from ..progress import ProgressFn
from ..store.results import ConceptStamp, result_type
from .gains import GainsSetup, prepare_gains
from .settings import ControlSettings

ANALYSIS = "control"
SCHEDULES = ("llv", "uniform", "last", "middle", "early", "random")
#: Largest amplitude tried, relative to the surrogate's schedule.
MAX_SCALE = 1024.0
#: Amplitudes evaluated per prompt in one batched pass of the bisection.
BATCH = 8


def schedules(h: np.ndarray, layers: Sequence[int], n_layers: int, dy: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Every schedule of the module doc for target ``dy``: name -> ``u`` ``[L]`` (zero where no direction)."""
    h = np.asarray(h, dtype=np.float64)
    allowed = np.zeros(n_layers, dtype=bool)
    allowed[list(layers)] = True
    g = np.where(allowed, h, 0.0)
    out: dict[str, np.ndarray] = {}
    norm2 = float(g @ g)
    out["llv"] = dy * g / norm2 if norm2 > 0 else np.full(n_layers, np.nan)
    total = float(g.sum())
    out["uniform"] = np.where(allowed, dy / total, 0.0) if total != 0 else np.full(n_layers, np.nan)
    first = int(min(layers))
    rng = np.random.default_rng(seed)
    picks = {"last": n_layers - 1, "middle": n_layers // 2, "early": max(n_layers // 4, first),
             "random": int(rng.choice(list(layers)))}
    for name, layer in picks.items():
        layer = layer if allowed[layer] else first
        u = np.zeros(n_layers)
        u[layer] = dy / g[layer] if g[layer] != 0 else np.nan
        out[name] = u
    return out


def _mean_shift(contexts: Sequence[PromptContext], V: torch.Tensor, U: torch.Tensor) -> np.ndarray:
    """Mean readout change over prompts for each row of ``U`` ``[m, L]``."""
    L = V.shape[0] - 1
    shifts = [ctx.readout_shifts(U, V, V[L]) for ctx in contexts]
    return torch.stack(shifts).mean(0).double().cpu().numpy()


def validate(
    contexts: Sequence[PromptContext], V: torch.Tensor, u: np.ndarray, dy: float, *, tol: float = 1e-2,
    max_scale: float = MAX_SCALE, rounds: int = 12,
) -> tuple[float, float, bool]:
    """``(amplitude a, achieved Δ(a u), reached)`` for schedule ``u`` and target ``dy`` (module doc)."""
    if not np.all(np.isfinite(u)) or dy == 0:
        return (0.0, 0.0, dy == 0)
    base = torch.as_tensor(u).to(V)

    def shift(amps: np.ndarray) -> np.ndarray:
        return _mean_shift(contexts, V, torch.as_tensor(amps).to(V)[:, None] * base[None])

    sign = np.sign(dy)
    # bracket: grow the amplitude until the shift passes the target (in the target's direction)
    scales = 2.0 ** np.arange(0, np.log2(max_scale) + 1)
    lo, lo_val, hi = 0.0, 0.0, None
    for start in range(0, len(scales), BATCH):
        amps = scales[start:start + BATCH]
        vals = shift(amps)
        for a, val in zip(amps, vals):
            if abs(val - dy) <= tol * abs(dy):
                return float(a), float(val), True
            if sign * (val - dy) > 0:
                hi = float(a)
                break
            lo, lo_val = float(a), float(val)
        if hi is not None:
            break
    if hi is None:
        return lo, lo_val, False
    best = (lo, lo_val)
    for _ in range(rounds):
        amps = np.linspace(lo, hi, BATCH + 2)[1:-1]
        vals = shift(amps)
        for a, val in zip(amps, vals):
            if abs(val - dy) < abs(best[1] - dy):
                best = (float(a), float(val))
            if abs(val - dy) <= tol * abs(dy):
                return float(a), float(val), True
        below = [a for a, v in zip(amps, vals) if sign * (v - dy) < 0]
        above = [a for a, v in zip(amps, vals) if sign * (v - dy) > 0]
        lo = max([lo, *below]) if below else lo
        hi = min([hi, *above]) if above else hi
    return best[0], best[1], False


@result_type
class ControlResult(ConceptStamp):
    """Multi-layer schedules reaching each target ``Δy``: surrogate, then validated in the full model.

    ``S`` schedules (``names``), ``N`` targets, ``L`` layers; the summary lists ``gains`` and, per
    schedule and target, the validated schedule and what it reached.
    """

    SUMMARY_ARRAYS = ("gains",)
    SUMMARY_SKIP = ("names",)  # the schedules are keyed by name

    order: int
    complement: str
    targets: list  # Δy values
    names: list  # schedule names (SCHEDULES)
    tol: float
    n_prompts: int
    elapsed_s: float
    gains: np.ndarray  # [L] the surrogate's h (0 where no direction)
    surrogate_u: np.ndarray  # [S, N, L] schedules reaching Δy in the surrogate
    u: np.ndarray  # [S, N, L] validated schedules (amplitude x surrogate schedule)
    amplitude: np.ndarray  # [S, N]
    energy: np.ndarray  # [S, N] ||u||² of the validated schedule (NaN when not reached)
    surrogate_energy: np.ndarray  # [S, N]
    achieved: np.ndarray  # [S, N] mean readout change in the full model
    reached: np.ndarray  # [S, N] bool

    def summary_extra(self) -> dict:
        """``schedules``: per schedule and target, ``u``, ``energy``, ``achieved``, ``reached`` (CLI JSON)."""
        schedules = {
            name: [{"target": float(t), "u": self.u[s, i].tolist(), "energy": float(self.energy[s, i]),
                    "achieved": float(self.achieved[s, i]), "reached": bool(self.reached[s, i]),
                    "amplitude": float(self.amplitude[s, i]), "surrogate_energy": float(self.surrogate_energy[s, i])}
                   for i, t in enumerate(self.targets)]
            for s, name in enumerate(self.names)
        }
        return {"schedules": schedules}


def population_gains(setup: GainsSetup, order: int, complement: str, seed: int = 0) -> np.ndarray:
    """The surrogate's gains ``h`` ``[L]`` of the operating prompts' mean reduced model (0 where no direction);
    memoized on ``setup`` (a sweep plans many LLV targets on one setup: one surrogate serves them all)."""

    def compute() -> np.ndarray:
        h = np.zeros(setup.handle.n_layers)
        h[setup.layers] = setup.predicted(setup.bases(complement, order, seed), "population")[0]
        return h

    return setup.memoized(("population_gains", int(order), complement, int(seed)), compute)


def analyze_control(
    handle: ModelHandle,
    data: ConceptData,
    targets: Sequence[float] | None = None,
    settings: ControlSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> ControlResult:
    """Schedules for every target ``Δy`` (``targets``, else ``settings.targets``), each validated in the full
    model (module doc); ``overrides``: fields of :class:`~lldd_core.analysis.settings.ControlSettings` by name."""
    if targets is not None:
        overrides["targets"] = tuple(targets) if not isinstance(targets, str) else targets
    s = ControlSettings.resolve(settings, overrides).check(handle.info.d_model)
    targets, order, complement, seed, tol = list(s.targets), s.order, s.complement, s.seed, s.tol
    report = progress or (lambda frac, msg: None)
    t0 = time.perf_counter()
    setup = prepare_gains(handle, data, s, progress=lambda f, m: report(0.2 * f, m))
    report(0.2, f"{complement} basis of order {order}")
    h = population_gains(setup, order, complement, seed)
    contexts = [setup.context(i) for i in range(len(setup.evaluation))]
    L = handle.n_layers
    S, N = len(SCHEDULES), len(targets)
    surrogate = np.zeros((S, N, L))
    u = np.zeros((S, N, L))
    amp, energy, sur_energy, achieved = (np.zeros((S, N)) for _ in range(4))
    reached = np.zeros((S, N), dtype=bool)
    for j, dy in enumerate(targets):
        plan = schedules(h, setup.layers, L, dy, seed)
        for s, name in enumerate(SCHEDULES):
            report(0.4 + 0.6 * (j * S + s) / (S * N), f"Validating {name} for Δy = {dy:g}")
            surrogate[s, j] = plan[name]
            sur_energy[s, j] = float(np.sum(plan[name] ** 2))
            a, got, ok = validate(contexts, setup.directions, plan[name], dy, tol=tol)
            amp[s, j], achieved[s, j], reached[s, j] = a, got, ok
            u[s, j] = a * np.nan_to_num(plan[name])
            energy[s, j] = float(np.sum(u[s, j] ** 2)) if ok else np.nan
    result = ControlResult(
        **handle.result_fields(), n_params=sum(p.numel() for p in handle.model.parameters()), dataset=data.name,
        source=data.source, classes=list(data.classes), order=int(order), complement=complement, n_layers=L,
        layers=setup.layers, split_sizes=dict(setup.splits.per_class), targets=targets, names=list(SCHEDULES),
        tol=float(tol), n_prompts=len(contexts), elapsed_s=time.perf_counter() - t0, gains=h, surrogate_u=surrogate,
        u=u, amplitude=amp, energy=energy, surrogate_energy=sur_energy, achieved=achieved, reached=reached,
    )
    report(1.0, "Done")
    return result
