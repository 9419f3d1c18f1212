"""Agreement of predicted and measured gain curves, and how far a concept direction can be trusted.

Model-free numerics on arrays: correlations over layers per prompt and of the mean curves, and the
per-layer reliability of the class-mean directions that flags layers out of the agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none (one layer)."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else float("nan")


def _corr(fn: Callable, a: np.ndarray, b: np.ndarray) -> float:
    """Correlation over layers; NaN when a curve is constant (or has one point)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(fn(a, b)[0])


@dataclass(frozen=True)
class Agreement:
    """Spearman / Pearson of predicted against measured curves, per prompt and aggregated."""

    spearman: np.ndarray  # [P]
    pearson: np.ndarray  # [P]
    mean_spearman: float
    mean_pearson: float
    spearman_of_means: float
    pearson_of_means: float


def agreement(predicted: np.ndarray, measured: np.ndarray, keep: np.ndarray | None = None) -> Agreement:
    """Correlations over layers of each prompt's curves ``[P, K]``, their means, and those of the mean curves.

    ``keep`` (``[K]`` bool) restricts the correlations to those layers (flagged layers left out).
    """
    if keep is not None:
        predicted, measured = predicted[:, keep], measured[:, keep]
    sp = np.array([_corr(stats.spearmanr, p, m) for p, m in zip(predicted, measured)])
    pe = np.array([_corr(stats.pearsonr, p, m) for p, m in zip(predicted, measured)])
    mp, mm = predicted.mean(0), measured.mean(0)
    return Agreement(sp, pe, _nanmean(sp), _nanmean(pe), _corr(stats.spearmanr, mp, mm), _corr(stats.pearsonr, mp, mm))


#: A layer is flagged when its relative direction strength is below this share of the concept's strongest layer's.
MIN_RELATIVE_STRENGTH = 0.05


def direction_reliability(states: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Class-mean difference norms ``‖E_l‖``, their sampling noise, their relative strength, and the flagged layers.

    ``E_l = μ_{1,l} − μ_{0,l}`` over ``states`` ``[N, L + 1, d]``. The relative strength is
    ``s_l = ‖E_l‖ / rms_l`` with ``rms_l`` the root-mean-square state norm at layer ``l`` (so layers
    whose residual stream is larger are not favoured). A layer is flagged when
    ``s_l < MIN_RELATIVE_STRENGTH · max_k s_k`` (or ``E_l = 0``): its concept direction is a
    twentieth as strong as at the concept's strongest layer, e.g. GPT-2's layer 0 when every text
    ends with the same token and only position embeddings differ (``‖E_0‖ = 0.008`` against 13 at
    layer 1). The noise ``σ_l = sqrt(tr Σ_{1,l} / N_1 + tr Σ_{0,l} / N_0)`` — the ``‖E_l‖``
    expected with no class difference at all — is reported beside it, not used for the flag: summed
    over all ``d`` dimensions it can exceed ``‖E_l‖`` even where the classes separate along ``v_l``.
    """
    X = np.asarray(states, dtype=np.float64)
    y = np.asarray(labels) == 1
    pos, neg = X[y], X[~y]
    norms = np.linalg.norm(pos.mean(0) - neg.mean(0), axis=-1)
    noise = np.sqrt(pos.var(0, ddof=1).sum(-1) / len(pos) + neg.var(0, ddof=1).sum(-1) / len(neg)) if min(
        len(pos), len(neg)) > 1 else np.zeros_like(norms)
    rms = np.sqrt((X**2).sum(-1).mean(0))
    strength = np.where(rms > 0, norms / np.where(rms > 0, rms, 1.0), 0.0)
    weak = strength < MIN_RELATIVE_STRENGTH * strength.max()
    flagged = [int(layer) for layer in np.flatnonzero((norms == 0) | weak)]
    return norms, noise, strength, flagged


def kept_layers(layers: Sequence[int], flagged: Sequence[int]) -> np.ndarray:
    """``[K]`` bool: which injection layers enter the agreement figures (flagged ones do not)."""
    return np.array([k not in set(flagged) for k in layers], dtype=bool)
