"""Gains ablations: the agreement of predicted and measured curves as one setting sweeps its values.

``vary`` is the surrogate's order, the injection size ``ε`` or the basis complement; everything else
is fixed at the :class:`~lldd_core.analysis.settings.GainsSettings`. Directions, splits and prompts are
shared by every value, and only what the swept setting changes is recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..concepts.data import ConceptData
from ..errors import InputError
from ..linalg.agreement import agreement, kept_layers
from ..models.loading import ModelHandle
from ..progress import ProgressFn
from ..store.results import result_type
from .gains import DirectionStamp, check_finite, common_fields, prepare_gains
from .settings import COMPLEMENTS, GainsSettings

ABLATION = "gains-ablation"
#: What an ablation can sweep, and the values it sweeps by default.
ABLATIONS = ("order", "eps", "complement")
EPS_VALUES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@result_type
class GainsAblation(DirectionStamp):
    """Agreement of predicted and measured gains as one parameter (``vary``) takes ``values``.

    Row ``i`` of every array belongs to ``values[i]``; the other parameters are the recorded
    ``order``, ``eps`` and ``complement``. ``exact`` does not depend on any of them. The summary
    lists each value with its aggregated agreement.
    """

    SUMMARY_SKIP = (*DirectionStamp.SUMMARY_SKIP, "values")

    vary: str
    values: list  # [V]
    order: int
    eps: float
    complement: str
    mode: str
    elapsed_s: float
    mean_spearman: np.ndarray  # [V]
    mean_pearson: np.ndarray  # [V]
    spearman_of_means: np.ndarray  # [V]
    pearson_of_means: np.ndarray  # [V]
    spearman: np.ndarray  # [V, P]
    pearson: np.ndarray  # [V, P]
    predicted: np.ndarray  # [V, P, K]
    measured: np.ndarray  # [V, P, K]
    exact: np.ndarray  # [P, K]

    def summary_extra(self) -> dict:
        """``values``: the swept values with their aggregated agreement (CLI JSON)."""
        rows = [
            {"value": v, "mean_spearman": float(self.mean_spearman[i]), "mean_pearson": float(self.mean_pearson[i]),
             "spearman_of_means": float(self.spearman_of_means[i]), "pearson_of_means": float(self.pearson_of_means[i])}
            for i, v in enumerate(self.values)
        ]
        return {"values": rows}


def default_orders(d: int) -> list[int]:
    """``1, 2, 4, …`` below ``d``, then ``d``: the order sweep ends at the full order."""
    return [2**i for i in range(max(d, 1).bit_length()) if 2**i < d] + [d]


def ablation_values(vary: str, d: int, values: Sequence | None = None) -> list:
    """The values an ablation of ``vary`` sweeps: ``values`` checked, or the defaults (orders: the powers of two
    below the hidden size ``d`` and ``d`` itself, where the prediction is exact)."""
    if vary not in ABLATIONS:
        raise InputError(f"Unknown ablation {vary!r}: choose one of {', '.join(ABLATIONS)}.")
    if vary == "order":
        chosen = sorted({int(v) for v in values}) if values is not None else default_orders(d)
        bad = [v for v in chosen if not 1 <= v <= d]
        if bad:
            raise InputError(f"Orders must lie between 1 and the hidden size {d}; got {bad}.")
    elif vary == "eps":
        chosen = sorted({float(v) for v in values}) if values is not None else list(EPS_VALUES)
        bad = [v for v in chosen if not 0 < v <= 10]
        if bad:
            raise InputError(f"ε must be positive (0.01..0.5 is the useful range); got {bad}.")
    else:
        chosen = list(dict.fromkeys(values)) if values is not None else list(COMPLEMENTS)
        bad = [v for v in chosen if v not in COMPLEMENTS]
        if bad:
            raise InputError(f"Unknown complement(s) {bad}: choose from {', '.join(COMPLEMENTS)}.")
    if not chosen:
        raise InputError(f"Give at least one value of {vary} to sweep.")
    return chosen


def ablate_gains(
    handle: ModelHandle,
    data: ConceptData,
    vary: str,
    values: Sequence | None = None,
    settings: GainsSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> GainsAblation:
    """Agreement as ``vary`` (``order``, ``eps`` or ``complement``) takes ``values``, the rest fixed at ``settings``.

    Directions, splits and prompts are shared by every value; the measured and exact curves are
    computed once when the order or complement varies, the bases and predictions once when ``ε`` does.
    """
    s = GainsSettings.resolve(settings, overrides)
    values = ablation_values(vary, handle.info.d_model, values)
    for v in values:  # every configuration must be valid before any work starts
        replace(s, **{vary: v}).check(handle.info.d_model)
    s = s.check(handle.info.d_model)
    order, eps, complement, mode, seed = s.order, s.eps, s.complement, s.mode, s.seed
    fixed = {"order": order, "eps": eps, "complement": complement}
    report = progress or (lambda frac, msg: None)
    t0 = time.perf_counter()
    setup = prepare_gains(handle, data, s, progress=lambda f, m: report(0.1 * f, m))
    n = len(values)
    if vary == "eps":
        report(0.1, f"{complement} basis of order {order}")
        P = [setup.predicted(setup.bases(complement, order, seed), mode)] * n
        M, E = setup.curves(values, lambda f, m: report(0.5 + 0.5 * f, m))
    else:
        M1, E = setup.curves([eps], lambda f, m: report(0.1 + 0.1 * f, m))
        M = np.repeat(M1, n, axis=0)
        P = []
        for i, v in enumerate(values):
            setting = {**fixed, vary: v}
            report(0.2 + 0.8 * i / n, f"{setting['complement']} basis of order {setting['order']} ({i + 1}/{n})")
            P.append(setup.predicted(setup.bases(setting["complement"], setting["order"], seed), mode))
    P = np.stack(P)
    check_finite(handle, P, M)
    keep = kept_layers(setup.layers, setup.flagged_layers)
    agree = [agreement(p, m, keep) for p, m in zip(P, M)]
    result = GainsAblation(
        **common_fields(setup), vary=vary, values=list(values), order=int(order), eps=float(eps),
        complement=complement, mode=mode, elapsed_s=time.perf_counter() - t0,
        mean_spearman=np.array([a.mean_spearman for a in agree]), mean_pearson=np.array([a.mean_pearson for a in agree]),
        spearman_of_means=np.array([a.spearman_of_means for a in agree]),
        pearson_of_means=np.array([a.pearson_of_means for a in agree]),
        spearman=np.stack([a.spearman for a in agree]), pearson=np.stack([a.pearson for a in agree]),
        predicted=P, measured=M, exact=E,
    )
    report(1.0, "Done")
    return result
