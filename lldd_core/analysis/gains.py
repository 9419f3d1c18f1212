"""Gain curves of a concept injection: predicted by the LLV surrogate, measured, and exact linear.

For a concept dataset (:mod:`lldd_core.concepts`): directions ``v_l`` are the class-mean
differences of the last token's states on the *concept* split; the basis ``P_l``
(:mod:`lldd_core.linalg.llv`) uses the *operating* split; every curve is evaluated on the *evaluation*
prompts. Per evaluation prompt ``p`` and layer ``k`` (injection ``x_k <- x_k + u v_k`` at the last
token, readout ``v_L^T x_L`` before the final norm):

* ``predicted[p, k]`` = ``e_1^T Ā_{L-1}(p) ... Ā_{k+1}(p) B̄_k(p)`` with the prompt's own Jacobians
  on the shared basis (``mode="prompt"``), or the operating prompts' mean reduced model
  (``mode="population"``, the same curve for every prompt);
* ``measured[p, k]`` = the readout change over ``ε`` in the full model;
* ``exact[p, k]`` = ``∂(v_L^T x_L)/∂x_k · v_k``: the limit of ``measured`` as ``ε -> 0`` and of
  ``predicted`` as the order reaches ``d``.

Every model evaluation is blockwise (:mod:`lldd_core.forward.blockwise`): each prompt's prefix runs
once, then blocks are called alone from known states — the operating prompts' mean actions and the
evaluation prompts' actions with all prompts and columns of a batch in one call of one block,
Arnoldi's sequential products through kept graphs, and each prompt's measured and exact curves
by carrying every injected trajectory and every injection's tangent one layer on per call
(:func:`prompt_curves`; the exact gains in forward mode).

Agreement per prompt (:mod:`lldd_core.linalg.agreement`): Spearman and Pearson correlation of
``predicted`` and ``measured`` over layers; aggregated as their means over prompts and as the
correlation of the mean curves.

:func:`prepare_gains` does the work every variant shares (splits, states, directions) once;
:func:`analyze_gains` is one configuration; :mod:`lldd_core.analysis.ablation` sweeps the order,
``ε`` or the complement on the same directions and prompts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import ranges
from ..concepts.data import ConceptData
from ..concepts.directions import class_directions
from ..concepts.splits import Splits, split
from ..errors import NumericalError
from ..forward.blockwise import PromptBlocks, batch_blocks, blocks_of, mean_actions, prompt_blocks
from ..forward.depth import PromptContext, last_token_actions, last_token_states, prompt_context
from ..linalg.agreement import agreement, direction_reliability, kept_layers
from ..linalg.llv import arnoldi, krylov_bases, next_basis, pca_bases, predicted_gains, random_bases, reduced_model
from ..models.loading import ModelHandle
from ..models.placement import model_dtype
from ..progress import ProgressFn
from ..store.results import ConceptStamp, result_type
from .settings import ConceptSettings, GainsSettings

ANALYSIS = "gains"
#: the operating prompts' prefix caches a blockwise Krylov basis may keep (GainsSetup.mean_actions)
BLOCKWISE_CACHE_BYTES = 1 << 30


@dataclass
class DirectionStamp(ConceptStamp):
    """What every gain analysis of one dataset records besides its curves (:func:`common_fields`):
    the evaluation prompts and how far each layer's concept direction can be trusted."""

    #: The summary lists the prompts with their curves (or not at all).
    SUMMARY_SKIP = ("prompts",)

    prompts: list  # [P] evaluation texts
    direction_norms: list  # [L + 1] ‖E_l‖, the class-mean difference at each layer
    direction_noise: list  # [L + 1] its sampling noise (the ‖E_l‖ expected with no class difference)
    direction_strength: list  # [L + 1] ‖E_l‖ / rms state norm at l (the flag's measure)
    flagged_layers: list  # layers whose direction is too small to trust (see direction_reliability)


@result_type
class GainsResult(DirectionStamp):
    """Predicted (LLV surrogate), measured (injection) and exact gain curves of ``P`` prompts over ``K`` layers.

    Agreement figures leave the flagged layers out; ``agreement_all_layers`` keeps them. The summary
    lists each prompt with its curves and agreement.
    """

    order: int
    complement: str
    eps: float
    mode: str
    mean_spearman: float  # mean over prompts of the per-prompt correlation
    mean_pearson: float
    spearman_of_means: float  # correlation of the mean predicted and mean measured curves
    pearson_of_means: float
    best_layer_predicted: int  # argmax of the mean curve
    best_layer_measured: int
    best_layer_exact: int
    elapsed_s: float
    predicted: np.ndarray  # [P, K]
    measured: np.ndarray  # [P, K]
    exact: np.ndarray  # [P, K]
    spearman: np.ndarray  # [P] over the unflagged layers
    pearson: np.ndarray  # [P]
    directions: np.ndarray  # [L + 1, d]
    agreement_all_layers: dict  # mean_spearman, mean_pearson, spearman_of_means, pearson_of_means with flagged in

    def summary_extra(self) -> dict:
        """``prompts``: each evaluation text with its curves and agreement (CLI JSON)."""
        prompts = [
            {"text": t, "predicted": self.predicted[i].tolist(), "measured": self.measured[i].tolist(),
             "exact": self.exact[i].tolist(), "spearman": float(self.spearman[i]), "pearson": float(self.pearson[i])}
            for i, t in enumerate(self.prompts)
        ]
        return {"prompts": prompts}


# --- shared preparation --------------------------------------------------------------------------


@dataclass
class GainsSetup:
    """What every gain analysis of one dataset shares: splits, directions, tokenized prompts."""

    handle: ModelHandle
    data: ConceptData
    splits: Splits
    directions: torch.Tensor  # [L + 1, d] unit v_l, model dtype and device
    layers: list[int]  # the injection layers with a direction (k = 0 may be left out)
    operating: list[list[int]]
    evaluation: list[list[int]]
    texts: list[str]
    pad: int
    differences: torch.Tensor  # [L + 1, d] class-mean differences E_l (v_l = E_l / ||E_l||)
    class_means: torch.Tensor | None = None  # [2, L + 1, d] μ_1 (label 1), μ_0 of the concept split
    direction_norms: np.ndarray | None = None  # [L + 1] ‖E_l‖ (direction_reliability)
    direction_noise: np.ndarray | None = None  # [L + 1]
    direction_strength: np.ndarray | None = None  # [L + 1]
    flagged_layers: list[int] = field(default_factory=list)
    #: derived pieces computed once per setup (steering's gains: a plan per prompt must not redo them)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def memoized(self, key: tuple, compute: Any) -> Any:
        """``compute()`` the first time ``key`` is asked for, the stored value after (a copy of an array)."""
        if key not in self.memo:
            self.memo[key] = compute()
        value = self.memo[key]
        return value.copy() if isinstance(value, np.ndarray) else value

    def mean_action(self, layer: int, P: torch.Tensor) -> torch.Tensor:
        """``M_l P``: the operating prompts' mean Jacobian action ``[d, r]``."""
        h = self.handle
        return last_token_actions(h.model, h.adapter, self.operating, layer, P, pad_id=self.pad).mean(0)

    @contextlib.contextmanager
    def mean_actions(self) -> Iterator[Callable[[int, torch.Tensor], torch.Tensor]]:
        """``M_l P`` for the ``with`` body: blockwise (:func:`~lldd_core.forward.blockwise.mean_actions`: every
        operating prompt's prefix once, then one call of one block per action, all prompts and columns
        together; Arnoldi's products through kept graphs) while the prefix caches fit in
        ``BLOCKWISE_CACHE_BYTES``, else :meth:`mean_action` (full-sequence passes, nothing kept)."""
        h = self.handle
        with mean_actions(h.model, h.adapter, self.operating, pad_id=self.pad,
                          max_cache_bytes=BLOCKWISE_CACHE_BYTES) as blockwise:
            yield blockwise if blockwise is not None else self.mean_action

    def bases(self, complement: str, order: int, seed: int = 0) -> list[torch.Tensor]:
        """``P_0 .. P_L`` of the given complement and order (:mod:`lldd_core.linalg.llv`)."""
        if complement == "krylov":
            with self.mean_actions() as mean_action:
                return krylov_bases(self.directions, mean_action, order)
        if complement == "random":
            return random_bases(self.directions, order, seed)
        h = self.handle
        states = torch.as_tensor(last_token_states(h.model, h.adapter, self.operating, pad_id=self.pad))
        return pca_bases(self.directions, states.to(self.directions), order)

    def population_curve(self, bases: list[torch.Tensor]) -> np.ndarray:
        """The operating prompts' mean reduced model's predicted gains ``[K]`` (population mode)."""
        L = self.handle.n_layers
        with self.mean_actions() as mean_action:
            Abar = [bases[l + 1].T @ mean_action(l, bases[l]) for l in range(L)]
        return predicted_gains(Abar)[self.layers].detach().double().cpu().numpy()

    def predicted(self, bases: list[torch.Tensor], mode: str, rows: slice = slice(None)) -> np.ndarray:
        """Predicted gains ``[P, K]`` of the evaluation prompts ``rows`` (prompt mode) or the mean model's curve."""
        evaluation = self.evaluation[rows]
        if mode == "population":
            return np.repeat(self.population_curve(bases)[None], len(evaluation), axis=0)
        return self.prompt_predictions(bases, evaluation)

    def prompt_predictions(self, bases: list[torch.Tensor], evaluation: list[list[int]],
                           batch_size: int = 32) -> np.ndarray:
        """Each prompt's own reduced model on the shared ``bases``: predicted gains ``[P, K]``.

        Blockwise (:func:`~lldd_core.forward.blockwise.batch_blocks`), ``batch_size`` prompts at a time:
        their prefixes in one pass, their last tokens' states by ``L`` block calls, then ``A_l(p) P_l`` of
        every prompt and every column by one vmapped JVP of block ``l`` alone, ``3L`` layer evaluations
        per batch (re-running the prompts from block 0 for each layer, as before, took ``L(L + 1)/2``
        full-sequence ones with the tangents carried through every position).
        """
        h = self.handle
        out = []
        for start in range(0, len(evaluation), batch_size):
            blocks = batch_blocks(h.model, h.adapter, evaluation[start : start + batch_size], pad_id=self.pad)
            with blocks.live():
                X = blocks.states()  # [N, L + 1, d]
                actions = [blocks.actions(l, X[:, l], bases[l]) for l in range(h.n_layers)]  # [N, d, r] each
            out += [predicted_gains(reduced_model(bases, [a[i] for a in actions]))[self.layers]
                    for i in range(X.shape[0])]
        return torch.stack(out).detach().double().cpu().numpy()

    def context(self, i: int) -> PromptContext:
        """Evaluation prompt ``i`` with its prefix run once."""
        return prompt_context(self.handle.model, self.handle.adapter, self.evaluation[i])

    def curves(self, eps_values: Sequence[float], progress: ProgressFn | None = None,
               rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Measured gains ``[E, P, K]`` for each ``ε`` and exact gains ``[P, K]`` of the evaluation prompts
        ``rows``: per prompt its prefix once, then :func:`prompt_curves` (two block calls per layer)."""
        h = self.handle
        meas, exact = [], []
        which = range(len(self.evaluation))[rows]
        for n, i in enumerate(which):
            if progress is not None:
                progress(n / len(which), f"Measured and exact gains, prompt {n + 1}/{len(which)}")
            M, E = prompt_curves(prompt_blocks(h.model, h.adapter, self.evaluation[i]), self.directions, eps_values)
            meas.append(M[:, self.layers])
            exact.append(E[self.layers])
        M = torch.stack(meas, dim=1).detach().double().cpu().numpy()
        E = torch.stack(exact).detach().double().cpu().numpy()
        return M, E


def prepare_gains(
    handle: ModelHandle,
    data: ConceptData,
    settings: ConceptSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> GainsSetup:
    """Split ``data`` (``settings.sizes``, ``settings.seed``), take the concept split's last-token states and
    their class-mean directions; the first ``settings.n_eval`` evaluation prompts. ``overrides``: fields of
    the settings by name (for scripts)."""
    s = ConceptSettings.resolve(settings, overrides)
    n_eval, sizes, seed = ranges.N_EVAL.check(s.n_eval), ranges.check_sizes(s.sizes), ranges.SEED.check(s.seed)
    report = progress or (lambda frac, msg: None)
    splits = split(data, n_concept=sizes[0], n_operating=sizes[1], n_eval=sizes[2], seed=seed)
    tok = handle.info.tokenizer
    encode = handle.info.encode
    model, adapter = handle.model, handle.adapter
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    L = handle.n_layers
    states = last_token_states(model, adapter, [encode(t) for t in splits.concept.texts], pad_id=pad,
                               progress=lambda f, m: report(f, f"Concept states: {m}"))
    V = torch.as_tensor(class_directions(states, splits.concept.labels, allow_zero=True))
    V = V.to(dtype=model_dtype(model), device=handle.device)
    positive = np.asarray(splits.concept.labels) == 1
    mu = np.stack([states[positive].mean(0), states[~positive].mean(0)])
    E = torch.as_tensor(mu[0] - mu[1]).to(V)
    means = torch.as_tensor(mu).to(V)
    norms, noise, strength, flagged = direction_reliability(states, splits.concept.labels)
    layers = list(range(L))
    if float(V[0].norm()) == 0.0:
        # every concept text ends with the same token and x_0 carries no position: no direction at
        # layer 0; keep a placeholder unit vector for the basis and leave k = 0 out of the curves
        layers = layers[1:]
        V[0] = torch.nn.functional.normalize(torch.ones_like(V[0]), dim=0)
    zero = [k for k in range(1, L + 1) if float(V[k].norm()) == 0.0]
    if zero:
        raise NumericalError(f"The two classes have the same mean state at layers {zero}: no concept direction there.")
    texts = list(splits.evaluation.texts[:n_eval])
    return GainsSetup(handle, data, splits, V, layers, [encode(t) for t in splits.operating.texts],
                      [encode(t) for t in texts], texts, pad, differences=E, class_means=means,
                      direction_norms=norms,
                      direction_noise=noise, direction_strength=strength, flagged_layers=flagged)


def check_finite(handle: ModelHandle, *arrays: np.ndarray) -> None:
    if not all(np.isfinite(a).all() for a in arrays):
        raise NumericalError(f"NaN or Inf in the gains ({handle.spec.dtype}): use float32 or float64.")


def common_fields(setup: GainsSetup) -> dict:
    """The :class:`DirectionStamp` fields of ``setup``, by name (every gain result of it records them)."""
    h, data = setup.handle, setup.data
    return dict(**h.result_fields(), n_params=sum(p.numel() for p in h.model.parameters()), dataset=data.name,
                source=data.source, classes=list(data.classes), n_layers=h.n_layers, layers=setup.layers,
                split_sizes=dict(setup.splits.per_class), prompts=setup.texts,
                direction_norms=[float(x) for x in setup.direction_norms],
                direction_noise=[float(x) for x in setup.direction_noise],
                direction_strength=[float(x) for x in setup.direction_strength],
                flagged_layers=list(setup.flagged_layers))


# --- one configuration ---------------------------------------------------------------------------


def analyze_gains(
    handle: ModelHandle,
    data: ConceptData,
    settings: GainsSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> GainsResult:
    """Predicted, measured and exact gain curves of ``data``'s concept (module doc); ``overrides``: fields of
    :class:`~lldd_core.analysis.settings.GainsSettings` by name."""
    s = GainsSettings.resolve(settings, overrides).check(handle.info.d_model)
    order, eps, complement, mode = s.order, s.eps, s.complement, s.mode
    report = progress or (lambda frac, msg: None)
    t0 = time.perf_counter()
    setup = prepare_gains(handle, data, s, progress=lambda f, m: report(0.15 * f, m))
    report(0.15, f"{complement} basis of order {order}")
    bases = setup.bases(complement, order, s.seed)
    report(0.5, "Reduced models")
    P = setup.predicted(bases, mode)
    M, E = setup.curves([eps], lambda f, m: report(0.6 + 0.4 * f, m))
    check_finite(handle, P, M[0])
    result = gains_result(common_fields(setup), order=order, complement=complement, eps=eps, mode=mode,
                          predicted=P, measured=M[0], exact=E, directions=setup.directions.detach().double().cpu().numpy(),
                          elapsed_s=time.perf_counter() - t0)
    report(1.0, "Done")
    return result


def gains_result(common: dict, *, order: int, complement: str, eps: float, mode: str, predicted: np.ndarray,
                 measured: np.ndarray, exact: np.ndarray, directions: np.ndarray, elapsed_s: float) -> GainsResult:
    """A :class:`GainsResult` from its curves: agreement (flagged layers out) and best layers computed here."""
    layers = common["layers"]
    agree = agreement(predicted, measured, kept_layers(layers, common["flagged_layers"]))
    every = agreement(predicted, measured)
    return GainsResult(
        **common, order=int(order), complement=complement, eps=float(eps), mode=mode,
        mean_spearman=agree.mean_spearman, mean_pearson=agree.mean_pearson,
        spearman_of_means=agree.spearman_of_means, pearson_of_means=agree.pearson_of_means,
        best_layer_predicted=int(layers[int(np.argmax(predicted.mean(0)))]),
        best_layer_measured=int(layers[int(np.argmax(measured.mean(0)))]),
        best_layer_exact=int(layers[int(np.argmax(exact.mean(0)))]),
        elapsed_s=float(elapsed_s), predicted=predicted, measured=measured, exact=exact,
        spearman=agree.spearman, pearson=agree.pearson, directions=directions,
        agreement_all_layers={"mean_spearman": every.mean_spearman, "mean_pearson": every.mean_pearson,
                              "spearman_of_means": every.spearman_of_means, "pearson_of_means": every.pearson_of_means},
    )


# --- one prompt on its own -----------------------------------------------------------------------


@dataclass(frozen=True)
class PromptGains:
    """One prompt's curves over all layers ``k = 0..L-1`` with the prompt as its own operating set."""

    predicted: torch.Tensor  # [L]
    measured: torch.Tensor  # [L]
    exact: torch.Tensor  # [L]
    bases: list[torch.Tensor]  # P_0 .. P_L, [d, r] each


def prompt_gains(source: PromptBlocks | PromptContext, directions: torch.Tensor, *, order: int = 32,
                 eps: float = 0.1) -> PromptGains:
    """Predicted (order ``r`` Krylov basis of this prompt's own Jacobians), measured and exact gains.

    Every block is called alone from its known state (:mod:`lldd_core.forward.blockwise`: the prefix's
    keys and values as they are, no copy of the cache, the live mode entered once), one layer after
    the other; layer ``l`` costs two block calls whatever ``r`` and ``L``:

    * one vmapped JVP at ``x_l`` of the columns ``[P_l, t_0 .. t_{l-1}, v_l]``: the first ``r`` give
      ``A_l P_l``, which grows ``P_{l+1}`` (:func:`~lldd_core.linalg.llv.next_basis`) and is the reduced
      model's action; the others carry each injection's tangent one layer on, ``t_k = A_{l} .. A_k v_k``,
      so the exact gains ``v_L^T t_k`` come out of the last layer (forward mode instead of a backward);
    * one batched evaluation of ``[x_l, x^{(0)}_l .. x^{(l-1)}_l, x_l + ε v_l]``: the next state and each
      injected trajectory (row ``k`` entered ``ε v_k`` at layer ``k``) one layer on; the measured gains
      are ``(v_L^T x^{(k)}_L - v_L^T x_L) / ε``.

    Layer 0 first runs Arnoldi on ``A_0`` (:func:`~lldd_core.linalg.llv.arnoldi`: ``r - 1`` products of
    one column, one after the other, for stability), each a backward through block 0's kept graph
    (:meth:`~lldd_core.forward.blockwise.PromptBlocks.operator`, no forward per product); they are
    ``A_0 P_0`` but its last column, which goes with layer 0's JVP. With the prefix that is
    ``3L + r`` layer evaluations (:mod:`lldd_core.forward.counting`: block calls and kept-graph
    products; 68 for ``L = 12, r = 32``, where :func:`prompt_gains_reference` makes 157 and deep-copies
    the cache for each call); the numbers are the reference path's up to rounding. With the prompt's own Jacobians
    the basis holds every earlier injection as propagated, so the predicted curve equals the exact one
    once ``r`` exceeds the number of layers (and at ``r = d`` always).
    """
    blocks = source if isinstance(source, PromptBlocks) else blocks_of(source.model, source.adapter,
                                                                        source.input_ids, source.cache)
    L = blocks.n_layers
    V = directions.to(blocks.x0)
    w = V[L]
    with blocks.live():
        x = blocks.x0
        P0, known = arnoldi(V[0], blocks.operator(0, x), order)
        bases, actions = [P0], []
        tangents = x.new_zeros(x.shape[0], 0)  # [d, l]: t_k at layer l's input, k < l
        injected = x.new_zeros(0, x.shape[0])  # [l, d]: x^{(k)}_l, k < l
        for layer in range(L):
            m = min(known.shape[1], order) if layer == 0 else 0  # A_0's columns Arnoldi already has
            tangents = torch.cat([tangents, V[layer][:, None]], dim=1)
            cols = blocks.actions(layer, x, torch.cat([bases[layer][:, m:], tangents], dim=1))
            carried = torch.cat([known[:, :m], cols[:, : order - m]], dim=1)
            tangents = cols[:, order - m:]
            actions.append(carried)
            bases.append(next_basis(V[layer + 1], carried, order))
            out = blocks.map(layer, torch.cat([x[None], injected, (x + eps * V[layer])[None]]))
            x, injected = out[0], out[1:]
        measured = (injected @ w - x @ w) / eps
        exact = tangents.T @ w
    predicted = predicted_gains(reduced_model(bases, actions))
    return PromptGains(predicted, measured, exact, bases)


def prompt_curves(blocks: PromptBlocks, directions: torch.Tensor, eps_values: Sequence[float],
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured gains ``[E, L]`` for each ``ε`` and exact gains ``[L]`` of every injection layer, blockwise.

    The chain of :func:`prompt_gains` without the basis: per layer ``l`` one vmapped JVP of block ``l``
    carries every injection's tangent ``t_k`` (``k <= l``) one layer on (exact gains ``v_L^T t_k``,
    forward mode), and one batched evaluation carries the state and every injected trajectory
    (``ε v_k`` entered at layer ``k``, each ``ε``) one layer on: ``2L`` block calls after the prefix,
    however many ``ε``.
    """
    L = blocks.n_layers
    V = directions.to(blocks.x0)
    w = V[L]
    eps = torch.as_tensor([float(e) for e in eps_values], dtype=V.dtype, device=V.device)  # [E]
    with blocks.live():
        x = blocks.x0
        tangents = x.new_zeros(x.shape[0], 0)  # [d, l]
        injected = x.new_zeros(0, x.shape[0])  # [l * E, d], injection layer major
        for layer in range(L):
            tangents = blocks.actions(layer, x, torch.cat([tangents, V[layer][:, None]], dim=1))
            out = blocks.map(layer, torch.cat([x[None], injected, x + eps[:, None] * V[layer]]))
            x, injected = out[0], out[1:]
        measured = (injected.reshape(L, len(eps), -1) @ w - x @ w) / eps  # [L, E]
        exact = tangents.T @ w
    return measured.T, exact


def prompt_gains_reference(ctx: PromptContext, directions: torch.Tensor, *, order: int = 32,
                           eps: float = 0.1) -> PromptGains:
    """:func:`prompt_gains` the way it was computed before the blockwise path (the bench's baseline and the
    tests' reference): each Jacobian action re-runs the last token from block 0 on a deep copy of the
    prefix cache, the measured gains are one batched pass of the last token, the exact ones one backward.
    """
    L = ctx.n_layers
    V = directions.to(ctx.states)
    actions: list[torch.Tensor] = []
    bases = krylov_bases(V, ctx.jacobian_actions, order, actions)
    predicted = predicted_gains(reduced_model(bases, actions))
    return PromptGains(predicted, ctx.measured_gains(V, V[L], eps), ctx.exact_gains(V, V[L]), bases)
