"""The sweep's answers: per cell what it achieves and costs, Pareto fronts, recommendations, the best layer.

Per cell (against the unsteered baseline cell, same prompts):

* ``success``: the share of texts assigned to the target class (``success_by``): by their *verdict* (the mean
  readout along the continuation beyond the class-mean boundary, the Steering page's verdict; the default), by the
  concept probe (``p > 0.5``) or by the external judge (the default when one is given); ``readout_shift``: the mean over prompts of the readout along the
  continuation minus the unsteered one's;
* ``perplexity``: ``exp`` of the mean log-loss over all continuation tokens (token-weighted) under the unsteered
  model; ``repetition``: the mean ``1 − distinct-2``; ``kl``: the side effect on neutral prompts.

A cell is on its method's **Pareto front** when no other cell of the method has at least its success at most its
perplexity, one of them strictly. The **recommended** setting of a method is its cheapest cell — the least
``|strength|``, then the lower perplexity — with ``success ≥ target`` and ``perplexity ≤ budget × unsteered``.

**Best layer.** The LLV surrogate predicts the gain ``h_l`` of an injection at each layer (the operating
prompts' mean reduced model, :func:`~lldd_core.analysis.control.population_gains`); the predicted best layer is
the trusted layer of largest ``h_l``. The measured best layer is the swept additive layer whose cells shift the
readout most (mean over the swept non-zero strengths). Sweeping the strengths at the predicted layer alone instead
of at all ``K`` trusted layers saves ``(K − 1) · S · P`` forward passes (``S`` non-zero strengths, ``P`` passes per
cell); the prediction itself costs the Jacobian-vector products counted in ``prediction_jvps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ...store.results import ModelStamp, result_type
from .sweep import UNSTEERED, CellResult

#: The metrics of every row and of the unsteered baseline, in the order the JSON lists them.
METRICS = ("success", "perplexity", "repetition", "kl", "readout_shift")


def pooled_perplexity(cell: CellResult) -> float:
    """``exp(Σ_i T_i log ppl_i / Σ_i T_i)``: the perplexity of all the cell's continuation tokens together."""
    T = np.asarray(cell.new_tokens, dtype=np.float64)
    ok = (T > 0) & np.isfinite(cell.perplexity)
    return float(np.exp((T[ok] * np.log(cell.perplexity[ok])).sum() / T[ok].sum())) if ok.any() else float("nan")


#: How a text counts as a success: its verdict (mean readout beyond the class-mean boundary, towards the target
#: class), the concept probe's ``p > 0.5``, or the external judge's.
SUCCESS_BY = ("verdict", "probe", "judge")


def success_shares(cell: CellResult) -> dict[str, float | None]:
    """The share of the cell's texts each instrument assigns to the target class (``None``: no judge)."""
    return {"verdict": float(np.mean(cell.readout > cell.boundary)), "probe": float(np.mean(cell.probe > 0.5)),
            "judge": float(np.mean(cell.judge > 0.5)) if cell.judge.size else None}


def success_of(cell: CellResult, by: str) -> float:
    """The share of target-class texts by the instrument ``by`` (:data:`SUCCESS_BY`)."""
    value = success_shares(cell)[by]
    return float("nan") if value is None else value


def metrics(cell: CellResult, base: CellResult, by: str) -> dict[str, float]:
    """The :data:`METRICS` of ``cell`` against the unsteered ``base``, success by ``by``."""
    return {"success": success_of(cell, by), "perplexity": pooled_perplexity(cell),
            "repetition": float(np.mean(cell.repetition)), "kl": float(cell.kl),
            "readout_shift": float(np.mean(cell.readout - base.readout))}


def pareto(rows: Sequence[dict]) -> list[int]:
    """Indices of the rows no other row dominates (higher-or-equal success and lower-or-equal perplexity, one
    strictly; of rows at the same point, the least ``|strength|``), by perplexity."""
    def beats(j: int, i: int) -> bool:
        a, b = rows[i], rows[j]
        if not math.isfinite(b["perplexity"]) or b["success"] < a["success"] or b["perplexity"] > a["perplexity"]:
            return False
        if b["success"] > a["success"] or b["perplexity"] < a["perplexity"]:
            return True
        return (abs(b["strength"]), j) < (abs(a["strength"]), i)  # the same point: the cheapest setting stands for it

    front = [i for i, a in enumerate(rows) if math.isfinite(a["perplexity"])
             and not any(beats(j, i) for j in range(len(rows)) if j != i)]
    return sorted(front, key=lambda i: (rows[i]["perplexity"], -rows[i]["success"]))


def recommend(rows: Sequence[dict], target: float, budget: float, base_perplexity: float) -> dict | None:
    """The cheapest row reaching ``target`` within ``budget × base_perplexity`` (module doc), or ``None``."""
    limit = budget * base_perplexity
    ok = [r for r in rows if r["success"] >= target and math.isfinite(r["perplexity"]) and r["perplexity"] <= limit]
    return min(ok, key=lambda r: (abs(r["strength"]), r["perplexity"])) if ok else None


def measured_best_layer(rows: Sequence[dict]) -> int | None:
    """The additive layer of largest mean readout shift over its non-zero strengths (``None``: fewer than two
    layers swept)."""
    shifts: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == "additive" and r["strength"] != 0 and r["layer"] is not None:
            shifts.setdefault(int(r["layer"]), []).append(r["readout_shift"])
    if len(shifts) < 2:
        return None
    return max(shifts, key=lambda layer: float(np.mean(shifts[layer])))


@result_type
class LayerPrediction(ModelStamp):
    """The LLV surrogate's predicted gains ``h_l`` (``[L]``, 0 where a layer has no direction), the trusted layers,
    the order, the operating prompts and the Jacobian-vector products the prediction cost."""

    SUMMARY_ARRAYS: ClassVar[tuple[str, ...]] = ("gains",)

    dataset: str
    gains: np.ndarray
    trusted: list
    order: int
    n_operating: int
    jvps: int

    @property
    def best(self) -> int:
        return int(max(self.trusted, key=lambda layer: float(self.gains[layer])))


def prediction_jvps(n_operating: int, order: int, n_layers: int) -> int:
    """Products of the Krylov basis and the mean reduced model over the operating prompts: ``r − 1`` Arnoldi
    products at ``x_0``, ``r − 1`` per later layer for the basis, ``r`` per layer for the reduced model (each
    one Jacobian-vector product per operating prompt)."""
    r = max(order, 1)
    return int(n_operating * ((r - 1) * n_layers + r * n_layers))


def forward_passes(rows: Sequence[dict], prediction: LayerPrediction, per_cell: int) -> dict[str, Any]:
    """The additive sweep at every trusted layer against the sweep at the predicted best layer only."""
    strengths = sorted({r["strength"] for r in rows if r["method"] == "additive" and r["strength"] != 0})
    K, S = len(prediction.trusted), len(strengths)
    full, predicted = K * S * per_cell, S * per_cell
    return {"per_cell": per_cell, "full_layer_sweep": full, "predicted_layer_sweep": predicted,
            "saved": full - predicted, "prediction_jvps": prediction.jvps, "layers": K, "strengths": S}


@result_type
class SweepResult(ModelStamp):
    """A whole sweep judged (module doc): ``rows`` (one per cell: method, layer, strength and :data:`METRICS`),
    ``unsteered``, Pareto fronts (row indices per method), recommendations, best layers, forward passes; ``details``
    per row (probe and judge shares, the other LM's perplexity, an example text)."""

    dataset: str
    classes: list
    target: str
    prompts: list
    settings: dict
    rows: list
    details: list
    unsteered: dict
    unsteered_texts: list
    pareto: dict
    recommended: dict
    predicted_best_layer: int | None
    measured_best_layer: int | None
    predicted_gains: list
    forward_passes: dict
    probe_accuracy: float
    success_by: str  # SUCCESS_BY
    cells_computed: int
    cells_cached: int
    elapsed_s: float

    SUMMARY_SKIP: ClassVar[tuple[str, ...]] = ("details", "unsteered_texts")


def assemble(stamp: dict, request: Any, cells: dict, base: CellResult, prediction: LayerPrediction,
             computed: int, elapsed: float) -> SweepResult:
    """The :class:`SweepResult` of ``cells`` (``Cell → CellResult``, in the request's order) and the baseline."""
    s = request.settings
    by = s.success_by or ("judge" if base.judge.size else "verdict")
    rows, details = [], []
    for cell in request.cells:
        r = cells[cell]
        rows.append({"method": cell.method, "layer": cell.layer, "strength": float(cell.strength),
                     **metrics(r, base, by)})
        shares = success_shares(r)
        details.append({"verdict_success": shares["verdict"], "probe_success": shares["probe"],
                        "judge_success": shares["judge"],
                        "fluency_perplexity": float(np.exp(np.mean(np.log(r.fluency)))) if r.fluency.size else None,
                        "example": r.texts[0] if r.texts else "", "params": r.params})
    unsteered = {"method": UNSTEERED, **metrics(base, base, by)}
    by_method = {m: [i for i, r in enumerate(rows) if r["method"] == m] for m in s.methods}
    fronts = {m: [idx[j] for j in pareto([rows[i] for i in idx])] for m, idx in by_method.items()}
    recommended = {m: recommend([rows[i] for i in idx], s.success_target, s.fluency_budget, unsteered["perplexity"])
                   for m, idx in by_method.items()}
    return SweepResult(
        **stamp, dataset=request.data.name, classes=list(request.data.classes), target=request.target,
        prompts=list(request.prompts),
        settings={"methods": list(s.methods), "max_new_tokens": s.max_new_tokens, "sizes": list(s.sizes),
                  "seed": s.seed, "success_target": s.success_target, "fluency_budget": s.fluency_budget,
                  "steer_text": request.phrase, "classifier": s.classifier, "fluency_model": s.fluency_model,
                  "order": s.order, "neutral": list(s.neutral), "success_by": by},
        rows=rows, details=details, unsteered=unsteered, unsteered_texts=list(base.texts), pareto=fronts,
        recommended=recommended, predicted_best_layer=prediction.best, measured_best_layer=measured_best_layer(rows),
        predicted_gains=[float(g) for g in prediction.gains],
        forward_passes=forward_passes(rows, prediction, request.passes_per_cell()),
        probe_accuracy=float(base.probe_accuracy), success_by=by,
        cells_computed=int(computed), cells_cached=len(request.cells) + 1 - int(computed), elapsed_s=float(elapsed))


def predict_layers(setup: Any, order: int, seed: int) -> LayerPrediction:
    """The LLV surrogate's gains on ``setup``'s operating prompts and the trusted layers (module doc)."""
    from ...analysis.control import population_gains
    from ..calibrate import trusted_layers

    h = setup.handle
    order = min(order, h.info.d_model)
    return LayerPrediction(**h.result_fields(), dataset=setup.data.name,
                           gains=population_gains(setup, order, "krylov", seed), trusted=trusted_layers(setup),
                           order=int(order), n_operating=len(setup.operating),
                           jvps=prediction_jvps(len(setup.operating), order, h.n_layers))
