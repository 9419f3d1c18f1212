"""A concept probe: logistic regression on last-token states ``x_L`` of the concept split.

``p(label 1 | x) = σ(wᵀ z + b)`` with ``z = (x − m) / s`` standardized by the concept split's per-feature mean
``m`` and spread ``s``; ``w, b`` minimize the mean log-loss plus ``(c/2)‖w‖²`` (L-BFGS in float64, from zero:
deterministic). The held-out accuracy is measured on the evaluation split (both classes), which the fit never
sees. The lab asks the probe which class a steered text (prompt + continuation, read by the unsteered model)
belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: L2 weight ``c`` of the fit (on standardized features).
L2 = 1e-2


@dataclass(frozen=True)
class Probe:
    """A fitted probe: ``mean``, ``scale`` ``[d]`` (standardization), ``weight`` ``[d]``, ``bias``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float

    def probability(self, states: np.ndarray) -> np.ndarray:
        """``[N]`` ``p(label 1)`` of states ``[N, d]``."""
        z = (np.asarray(states, dtype=np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

    def accuracy(self, states: np.ndarray, labels: np.ndarray) -> float:
        """Share of ``states`` whose most likely label is ``labels``'."""
        return float(np.mean((self.probability(states) > 0.5) == (np.asarray(labels) == 1)))


def fit_probe(states: np.ndarray, labels: np.ndarray, l2: float = L2, max_iter: int = 200) -> Probe:
    """The probe of ``states`` ``[N, d]`` with 0/1 ``labels`` ``[N]`` (module doc)."""
    X = np.asarray(states, dtype=np.float64)
    y = torch.as_tensor(np.asarray(labels) == 1, dtype=torch.float64)
    mean = X.mean(0)
    scale = X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    Z = torch.as_tensor((X - mean) / scale)
    w = torch.zeros(Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, y) + 0.5 * l2 * (w @ w)
        value.backward()
        return value

    opt.step(loss)
    return Probe(mean, scale, w.detach().numpy().copy(), float(b.detach()))
