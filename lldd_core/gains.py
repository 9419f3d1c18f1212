"""Gain curves of a concept injection: predicted by the LLV surrogate, measured, and exact linear.

For a concept dataset (:mod:`lldd_core.concepts`): directions ``v_l`` are the class-mean
differences of the last token's states on the *concept* split; the basis ``P_l``
(:mod:`lldd_core.llv`) uses the *operating* split; every curve is evaluated on the *evaluation*
prompts. Per evaluation prompt ``p`` and layer ``k`` (injection ``x_k <- x_k + u v_k`` at the last
token, readout ``v_L^T x_L`` before the final norm):

* ``predicted[p, k]`` = ``e_1^T Ā_{L-1}(p) ... Ā_{k+1}(p) B̄_k(p)`` with the prompt's own Jacobians
  on the shared basis (``mode="prompt"``), or the operating prompts' mean reduced model
  (``mode="population"``, the same curve for every prompt);
* ``measured[p, k]`` = the readout change over ``ε`` in the full model (one batched pass);
* ``exact[p, k]`` = ``∂(v_L^T x_L)/∂x_k · v_k`` (one backward pass): the limit of ``measured`` as
  ``ε -> 0`` and of ``predicted`` as the order reaches ``d``.

Agreement per prompt: Spearman and Pearson correlation of ``predicted`` and ``measured`` over layers.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import stats

from .concepts import ConceptData, class_directions, split
from .depth import last_token_actions, last_token_states, prompt_context
from .errors import InputError, NumericalError
from .jacobian import ProgressFn
from .llv import COMPLEMENTS, krylov_bases, pca_bases, predicted_gains, random_bases, reduced_model
from .models import ModelHandle
from .results import result_type

ANALYSIS = "gains"
MODES = ("prompt", "population")


@result_type
class GainsResult:
    model: str
    revision: str
    dtype: str
    family: str
    dataset: str
    source: str
    classes: list
    order: int
    complement: str
    eps: float
    mode: str
    n_layers: int
    layers: list  # injection layers k
    split_sizes: dict  # per class: concept / operating / evaluation
    prompts: list  # evaluation texts
    mean_spearman: float
    mean_pearson: float
    best_layer_predicted: int
    best_layer_measured: int
    best_layer_exact: int
    elapsed_s: float
    predicted: np.ndarray  # [P, K]
    measured: np.ndarray  # [P, K]
    exact: np.ndarray  # [P, K]
    spearman: np.ndarray  # [P]
    pearson: np.ndarray  # [P]
    directions: np.ndarray  # [L + 1, d]

    def summary(self) -> dict:
        """The CLI's JSON: ``layers``, ``prompts`` (each with its curves and agreement) and the means."""
        keys = ("model", "revision", "dtype", "family", "dataset", "source", "classes", "order", "complement", "eps",
                "mode", "n_layers", "layers", "split_sizes", "mean_spearman", "mean_pearson", "best_layer_predicted",
                "best_layer_measured", "best_layer_exact", "elapsed_s")
        prompts = [
            {"text": t, "predicted": self.predicted[i].tolist(), "measured": self.measured[i].tolist(),
             "exact": self.exact[i].tolist(), "spearman": float(self.spearman[i]), "pearson": float(self.pearson[i])}
            for i, t in enumerate(self.prompts)
        ]
        return {**{k: getattr(self, k) for k in keys}, "prompts": prompts}


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none (one layer)."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else float("nan")


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(fn(a, b)[0])


def analyze_gains(
    handle: ModelHandle,
    data: ConceptData,
    *,
    order: int = 32,
    eps: float = 0.1,
    complement: str = "krylov",
    n_eval: int = 32,
    mode: str = "prompt",
    sizes: tuple[int, int, int] = (400, 200, 200),
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> GainsResult:
    """Predicted, measured and exact gain curves of ``data``'s concept (module doc)."""
    report = progress or (lambda frac, msg: None)
    d, L = handle.info.d_model, handle.n_layers
    if not 1 <= order <= d:
        raise InputError(f"The order must be between 1 and the hidden size {d}; got {order}.")
    if complement not in COMPLEMENTS:
        raise InputError(f"Unknown complement {complement!r}: choose one of {', '.join(COMPLEMENTS)}.")
    if mode not in MODES:
        raise InputError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
    if not 0 < eps <= 10:
        raise InputError(f"ε must be positive (0.01..0.5 is the useful range); got {eps}.")
    if n_eval < 1:
        raise InputError("Evaluate at least one prompt.")
    t0 = time.perf_counter()
    splits = split(data, n_concept=sizes[0], n_operating=sizes[1], n_eval=sizes[2], seed=seed)
    tok = handle.info.tokenizer
    encode = handle.info.encode
    model, adapter = handle.model, handle.adapter
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    report(0.0, "Concept states")
    concept_ids = [encode(t) for t in splits.concept.texts]
    states = last_token_states(model, adapter, concept_ids, pad_id=pad,
                               progress=lambda f, m: report(0.15 * f, f"Concept states: {m}"))
    V = torch.as_tensor(class_directions(states, splits.concept.labels, allow_zero=True))
    V = V.to(dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    layers = list(range(L))
    if float(V[0].norm()) == 0.0:
        # every concept text ends with the same token and x_0 carries no position: no direction at
        # layer 0; keep a placeholder unit vector for the basis and leave k = 0 out of the curves
        layers = layers[1:]
        V[0] = torch.nn.functional.normalize(torch.ones_like(V[0]), dim=0)
    zero = [k for k in range(1, L + 1) if float(V[k].norm()) == 0.0]
    if zero:
        raise NumericalError(f"The two classes have the same mean state at layers {zero}: no concept direction there.")

    report(0.15, "Operating prompts")
    operating = [encode(t) for t in splits.operating.texts]

    def mean_action(layer: int, P: torch.Tensor) -> torch.Tensor:
        return last_token_actions(model, adapter, operating, layer, P, pad_id=pad).mean(0)

    report(0.25, f"{complement} basis of order {order}")
    if complement == "krylov":
        bases = krylov_bases(V, mean_action, order)
    elif complement == "random":
        bases = random_bases(V, order, seed)
    else:
        op_states = torch.as_tensor(last_token_states(model, adapter, operating, pad_id=pad)).to(V)
        bases = pca_bases(V, op_states, order)

    texts = list(splits.evaluation.texts[:n_eval])
    eval_ids = [encode(t) for t in texts]
    report(0.5, "Reduced models")
    if mode == "population":
        Abar = [bases[l + 1].T @ mean_action(l, bases[l]) for l in range(L)]
        population = predicted_gains(Abar)
        pred = [population[layers]] * len(texts)
    else:
        actions = [last_token_actions(model, adapter, eval_ids, l, bases[l], pad_id=pad) for l in range(L)]  # [N, d, r]
        pred = [predicted_gains(reduced_model(bases, [a[i] for a in actions]))[layers] for i in range(len(texts))]
    meas, exact = [], []
    for i, ids in enumerate(eval_ids):
        report(0.6 + 0.4 * i / len(texts), f"Measured and exact gains, prompt {i + 1}/{len(texts)}")
        ctx = prompt_context(model, adapter, ids)
        meas.append(ctx.measured_gains(V, V[L], eps, layers))
        exact.append(ctx.exact_gains(V, V[L])[layers])
    P, M, E = (torch.stack(x).detach().double().cpu().numpy() for x in (pred, meas, exact))
    if not (np.isfinite(P).all() and np.isfinite(M).all()):
        raise NumericalError(f"NaN or Inf in the gains ({handle.spec.dtype}): use float32 or float64.")
    spearman = np.array([_corr(stats.spearmanr, P[i], M[i]) for i in range(len(texts))])
    pearson = np.array([_corr(stats.pearsonr, P[i], M[i]) for i in range(len(texts))])
    result = GainsResult(
        **handle.result_fields(),
        dataset=data.name, source=data.source, classes=list(data.classes), order=int(order), complement=complement,
        eps=float(eps), mode=mode, n_layers=L, layers=layers, split_sizes=dict(splits.per_class), prompts=texts,
        mean_spearman=_nanmean(spearman), mean_pearson=_nanmean(pearson),
        best_layer_predicted=int(layers[int(np.argmax(P.mean(0)))]),
        best_layer_measured=int(layers[int(np.argmax(M.mean(0)))]),
        best_layer_exact=int(layers[int(np.argmax(E.mean(0)))]),
        elapsed_s=time.perf_counter() - t0,
        predicted=P, measured=M, exact=E, spearman=spearman, pearson=pearson,
        directions=V.detach().double().cpu().numpy(),
    )
    report(1.0, "Done")
    return result
