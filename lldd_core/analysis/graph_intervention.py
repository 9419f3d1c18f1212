"""Interventions on attribution-graph neurons: the change measured in the model beside the graph's prediction.

Scaling neurons ``(layer, position, index)`` by factors ``alpha`` changes the raw target logits by

* **predicted** (:meth:`GraphResult.predict_intervention`): the graph's linear circuit, along its
  visited and kept edges only;
* **frozen**: the detached (frozen) model's exact linear response, ``d logit / dt`` at ``t = 0`` for the
  scale ``1 + t (alpha - 1)``, every downstream neuron responding through the frozen paths. For one
  neuron or many, the graph's prediction equals it exactly when every neuron on the paths was visited
  and kept (an unpruned graph with every neuron visited); the gap is what pruning and the cap leave out;
* **measured**: the full (live) model, intervened forward minus clean forward. Norm scales, softmax
  weights and gates are recomputed, so it differs from the frozen response by the model's nonlinear
  effects — even to first order, since the frozen derivative is not the ordinary one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..forward.linearize import detached_mode, live_mode
from ..forward.residual import run_to_layer
from ..models.arch import FamilyAdapter
from ..models.placement import input_device, model_dtype
from ..store.results import Result, result_type
from .graph import _Capture, mlp_down_modules, raw_logits

if TYPE_CHECKING:
    from ..models.loading import ModelHandle

ANALYSIS = "graph-intervention"
#: Neuron ``(layer, position, index)`` -> its scale factor.
Factors = Mapping[tuple[int, int, int], float]


def mlp_width(down: nn.Module) -> int:
    """Neurons per block: the output projection's input size (``nn.Linear``, or GPT-2's ``Conv1D`` ``[in, out]``)."""
    return int(getattr(down, "in_features", None) or down.weight.shape[0])


def _per_layer(values: Factors, base: float, n_layers: int, T: int, d_mlp: int, dtype: torch.dtype,
               device: torch.device) -> list[torch.Tensor]:
    """Each block's ``[1, T, d_mlp]`` factor tensor: ``base`` everywhere, ``values`` at their neurons."""
    f = torch.full((n_layers, T, d_mlp), base, dtype=dtype, device=device)
    for (lay, pos, idx), a in values.items():
        f[lay, pos, idx] = a
    return [f[i].unsqueeze(0) for i in range(n_layers)]


def measure_intervention(model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor, nodes: Factors,
                         targets: Sequence[int], *, linear: bool = False) -> np.ndarray:
    """Change of the raw target logits when the neurons are scaled: measured in the live model
    (``linear=False``), or the frozen model's exact linear response (``linear=True``; module doc)."""
    ids = input_ids.reshape(1, -1).to(input_device(model))
    downs = mlp_down_modules(model, adapter)
    n_layers, dtype, d_mlp = len(downs), model_dtype(model), mlp_width(downs[0])
    shape = (n_layers, ids.shape[1], d_mlp, dtype, ids.device)
    tgt = list(targets)
    if linear:
        # scale = 1 + t * (alpha - 1): at t = 0 the forward is the clean one, and d logit / dt is the
        # detached (linear) map's response to the whole step t = 1
        t = torch.zeros((), dtype=dtype, device=ids.device, requires_grad=True)
        scale = [1 + t * u for u in _per_layer({k: v - 1.0 for k, v in nodes.items()}, 0.0, *shape)]
        capture = _Capture(downs, scale=scale, inject=False)
        with detached_mode(model, adapter), torch.enable_grad(), capture.active():
            logits = raw_logits(model, adapter, run_to_layer(model, adapter, ids, n_layers).xk)
            grads = [torch.autograd.grad(logits[j], t, retain_graph=True)[0] for j in tgt]
        return np.array([float(g) for g in grads])
    clean, scaled = (scaled_logits(model, adapter, ids, values, tgt) for values in ({}, nodes))
    return scaled - clean


def scaled_logits(model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor, nodes: Factors,
                  targets: Sequence[int]) -> np.ndarray:
    """The live model's raw target logits with the neurons scaled (``{}``: the clean logits)."""
    ids = input_ids.reshape(1, -1).to(input_device(model))
    downs = mlp_down_modules(model, adapter)
    shape = (len(downs), ids.shape[1], mlp_width(downs[0]), model_dtype(model), ids.device)
    capture = _Capture(downs, scale=_per_layer(nodes, 1.0, *shape), inject=False)
    with live_mode(model, adapter), torch.no_grad(), capture.active():
        logits = raw_logits(model, adapter, run_to_layer(model, adapter, ids, len(downs)).xk)
    return logits.double().cpu().numpy()[list(targets)]


@result_type
class InterventionResult(Result):
    """Per target: the clean raw logit and its change when ``factors`` (``[layer, position, index, alpha]``
    rows) scale neurons, frozen (the detached model's linear response) and measured (the full model)."""

    factors: list
    targets: list[int]
    baseline: np.ndarray  # [K] clean raw logits
    frozen: np.ndarray  # [K]
    measured: np.ndarray  # [K]

    def validate(self) -> None:
        if not (len(self.targets) == self.baseline.size == self.frozen.size == self.measured.size):
            raise ValueError("intervention arrays of different lengths")


def check_intervention(factors: Factors, targets: Sequence[int], n_layers: int, n_tokens: int,
                       vocab: int) -> tuple[dict[tuple[int, int, int], float], list[int]]:
    """The factors and targets as plain ints and floats; :class:`InputError` for a neuron, factor or target
    outside the model and prompt (the neuron index is checked against the MLP width when the model runs)."""
    out: dict[tuple[int, int, int], float] = {}
    for key, a in factors.items():
        lay, pos, idx = (int(k) for k in key)
        if not (0 <= lay < n_layers and 0 <= pos < n_tokens and idx >= 0):
            raise InputError(f"No neuron (layer {lay}, position {pos}, index {idx}) in this model and prompt: "
                             "pick neurons of the graph.")
        if not math.isfinite(float(a)):
            raise InputError(f"The scale factor {a!r} is not a finite number: give one like 0 (zero) or 2 (double).")
        out[(lay, pos, idx)] = float(a)
    if not out:
        raise InputError("No neurons to intervene on: pin neurons of the graph first.")
    tgt = [int(t) for t in targets]
    if not tgt or any(not 0 <= t < vocab for t in tgt):
        raise InputError("The targets must be token ids of the model's vocabulary: use the graph's targets.")
    return out, tgt


def intervention_params(factors: Factors, targets: Sequence[int]) -> dict[str, list]:
    """The cache key's parameters: the factors sorted by neuron, the targets in order."""
    return {"factors": [[*k, float(a)] for k, a in sorted(factors.items())], "targets": [int(t) for t in targets]}


def analyze_intervention(handle: ModelHandle, input_ids: list[int], factors: Factors,
                         targets: Sequence[int]) -> InterventionResult:
    """The clean logits, the frozen and the measured change of the targets (module doc)."""
    model, adapter, ids = handle.model, handle.adapter, torch.tensor(input_ids)
    d_mlp = mlp_width(mlp_down_modules(model, adapter)[0])
    if any(idx >= d_mlp for _, _, idx in factors):
        raise InputError(f"The MLPs of this model have {d_mlp} neurons: pick neurons of the graph.")
    baseline = scaled_logits(model, adapter, ids, {}, targets)
    measured = scaled_logits(model, adapter, ids, factors, targets) - baseline
    frozen = measure_intervention(model, adapter, ids, factors, targets, linear=True)
    return InterventionResult(factors=intervention_params(factors, targets)["factors"], targets=list(targets),
                              baseline=baseline, frozen=frozen, measured=measured)
