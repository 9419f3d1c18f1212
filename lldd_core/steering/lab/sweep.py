"""The sweep's cells: ``(method, layer, strength)`` checked into cache keys, then generated in batches and scored.

:func:`sweep_request` checks everything before weights load (the settings, the dataset, the prompts, every
cell's method settings through the registry) and builds each cell's cache params. :func:`run_cells` computes the
cells the cache lacks, under the model lock: the concept (directions, splits), the probe, the unsteered
baseline, then the cells in generation batches — every prompt of a cell in one ``generate`` call, and the cells of
methods whose plan only adds vectors at the last position (additive, LLV) several to a call, each row group with
its own vectors (:class:`~lldd_core.forward.interventions.AddRowVectors`). Each cell is scored text by text
(:mod:`.metrics`: the scores do not depend on the batch) and handed to ``store`` as soon as it is done, so an
interrupted sweep keeps what it finished and a widened one computes only its new cells.

Greedy decoding: a cell's texts are a function of its setting and prompts. The unsteered baseline is its own
cell (method ``unsteered``); a zero-strength cell generates the same tokens and so scores the same numbers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ...concepts.catalog import load as load_dataset
from ...concepts.data import ConceptData
from ...concepts.splits import split
from ...errors import InputError
from ...forward.depth import last_token_states
from ...forward.interventions import AddRowVectors, AddVectors
from ...models.loading import ModelHandle, ModelInfo, ModelSpec
from ...progress import ProgressFn
from ...store.results import ModelStamp, result_type
from ..compare import SteeringPlan
from ..generate import Generated, GenerationSettings, check_context, generate
from ..methods.base import SteeringContext
from ..methods.registry import get as get_method
from ..service_steps import FETCH, SteeringSource, SteerRequest, readout_scale
from .judge import Judge, judge_revision, load_judge
from .knobs import knob
from .metrics import lm_perplexity, next_token_kl, next_token_logprobs, score_text
from .probe import Probe, fit_probe
from .settings import SweepSettings

ANALYSIS = "steer-sweep-cell"
#: The baseline cell's method name.
UNSTEERED = "unsteered"
#: Most rows (prompts × cells) one generation call holds.
MAX_ROWS = 64


@dataclass(frozen=True)
class Cell:
    """One setting: a method, the layer it steers at (``None``: the method's own layers) and its knob's value."""

    method: str
    layer: int | None
    strength: float

    def describe(self) -> str:
        if self.method == UNSTEERED:
            return "unsteered"
        where = "" if self.layer is None else f" at x_{self.layer}"
        return f"{self.method}{where}, {knob(self.method).symbol} = {self.strength:g}"


@result_type
class CellResult(ModelStamp):
    """One cell's texts and per-prompt measures (:mod:`.metrics`), each as the unsteered model reads them."""

    SUMMARY_ARRAYS: ClassVar[tuple[str, ...]] = ("perplexity", "readout", "probe", "repetition")

    method: str
    layer: int | None
    strength: float
    params: dict  # the method's settings as the plan resolved them
    dataset: str
    prompts: list
    texts: list  # [N] continuations
    new_tokens: np.ndarray  # [N] tokens generated
    perplexity: np.ndarray  # [N] under the unsteered model
    readout: np.ndarray  # [N] mean v_L^T x_L along the continuation
    probe: np.ndarray  # [N] the probe's p(target class) of prompt + continuation
    judge: np.ndarray  # [N] the external classifier's p(target label) of the continuation (empty: none)
    fluency: np.ndarray  # [N] perplexity under the other LM (empty: none)
    repetition: np.ndarray  # [N] 1 - distinct-2
    kl: float  # mean KL(P0 || Ps) of the next token on the neutral prompts
    boundary: float  # the class-mean boundary v_L^T (μ_1 + μ_0)/2 the verdict reads the readout against
    probe_accuracy: float  # the probe's held-out accuracy (evaluation split)
    forward_passes: int  # sequence forward passes: generation steps, scoring, neutral prompts
    elapsed_s: float


@dataclass
class SweepRequest:
    """One checked sweep: the settings, the data, the resolved prompts and phrase, every cell with its checked
    method settings and cache params."""

    spec: ModelSpec
    info: ModelInfo
    settings: SweepSettings
    data: ConceptData
    prompts: list[str]
    phrase: str
    target: str
    cells: list[Cell]
    params: dict[Cell, Any]  # the method's checked Params per cell (none for the baseline)
    common: dict[str, Any]
    method_keys: dict[Cell, dict] = field(default_factory=dict)

    @property
    def baseline(self) -> Cell:
        return Cell(UNSTEERED, None, 0.0)

    def key_params(self, cell: Cell) -> dict[str, Any]:
        """A cell's cache params: the sweep's common ones, the cell, and its method's own key entries."""
        return {**self.common, "method": cell.method, "layer": cell.layer, "strength": float(cell.strength),
                "method_params": self.method_keys.get(cell, {})}

    def passes_per_cell(self) -> int:
        """Sequence forward passes of one cell: ``T`` generation steps and one scoring pass per prompt, one pass
        per neutral prompt."""
        return len(self.prompts) * (self.settings.max_new_tokens + 1) + len(self.settings.neutral)


def sweep_request(info: ModelInfo, spec: ModelSpec, dataset: str | ConceptData,
                  settings: SweepSettings) -> SweepRequest:
    """Everything of a sweep checked against ``info``'s model before any weights load (module doc)."""
    L, d = info.n_layers, info.d_model
    s = settings.check(L, d)
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if not isinstance(data, ConceptData):
        raise InputError("The Steering lab needs a concept dataset.")
    splits = split(data, n_concept=s.sizes[0], n_operating=s.sizes[1], n_eval=s.sizes[2], seed=s.seed)
    evaluation = splits.evaluation
    prompts = list(s.prompts) or [t for t, y in zip(evaluation.texts, evaluation.labels) if y == 0][:s.n_prompts]
    if not prompts:
        raise InputError("No evaluation prompts: give prompts, or enlarge the evaluation split.")
    for prompt in prompts:
        check_context(len(info.encode(prompt)), s.max_new_tokens, info.max_positions, spec.model)
    concept = splits.concept
    phrase = s.steer_text.strip() or next(t for t, y in zip(concept.texts, concept.labels) if y == 1)
    cells, params, keys = [], {}, {}
    for method in s.methods:
        chosen, k = get_method(method), knob(method)
        for layer in s.method_layers(method, L):
            for value in s.values(method):
                cell = Cell(method, layer, float(value))
                checked = chosen.check(chosen.params(k.build(float(value), layer, phrase)), L, d)
                cells.append(cell)
                params[cell], keys[cell] = checked, chosen.cache_params(checked)
    common = {**s.cache_params(), "prompts": prompts, "steer_text": phrase, "dataset": data.name,
              "fingerprint": data.fingerprint(),
              "classifier": None if s.classifier is None else [s.classifier, judge_revision(s.classifier)],
              "fluency_model": s.fluency_model}
    return SweepRequest(spec, info, s, data, prompts, phrase, str(data.classes[0]), cells, params, common, keys)


@dataclass
class Instruments:
    """What scores every cell: the readout ``v_L``, the probe, the optional judge and other LM, the unsteered
    next-token log-probabilities on the neutral prompts."""

    readout: torch.Tensor
    boundary: float
    probe: Probe
    probe_accuracy: float
    judge: Judge | None
    fluency: ModelHandle | None
    neutral_ids: list[list[int]]
    neutral_base: torch.Tensor


def instruments(handle: ModelHandle, request: SweepRequest, setup: Any, progress: ProgressFn) -> Instruments:
    """Fit the probe on the concept split's ``x_L`` (held-out accuracy on the evaluation split), load the judge
    and the other LM, and read the neutral prompts unsteered."""
    s, L = request.settings, handle.n_layers
    encode, pad = handle.info.encode, setup.pad
    splits = setup.splits
    progress(0.02, "Concept probe")
    states = last_token_states(handle.model, handle.adapter, [encode(t) for t in splits.concept.texts], pad_id=pad)
    probe = fit_probe(states[:, L], np.asarray(splits.concept.labels))
    held = last_token_states(handle.model, handle.adapter, [encode(t) for t in splits.evaluation.texts], pad_id=pad)
    accuracy = probe.accuracy(held[:, L], np.asarray(splits.evaluation.labels))
    judge = load_judge(s.classifier, tuple(request.data.classes), s.classifier_label) if s.classifier else None
    fluency = None
    if s.fluency_model:
        from ...models.loading import load_model, resolve_model

        fluency = load_model(resolve_model(ModelSpec(s.fluency_model, device=str(handle.device))))
    neutral = [encode(p) for p in s.neutral]
    scale = readout_scale(setup)
    return Instruments(setup.directions[L], float(np.mean(scale.means)), probe, accuracy, judge, fluency, neutral,
                       next_token_logprobs(handle, neutral))


def plan_cell(source: SteeringSource, handle: ModelHandle, request: SweepRequest, cell: Cell,
              setup: Any) -> SteeringPlan:
    """The cell's plan through its registered method, with the pieces it declares fetched (cached) by the service."""
    s, method, params = request.settings, get_method(cell.method), request.params[cell]
    steer = SteerRequest(request.spec, request.prompts[0], method, params,
                         GenerationSettings(max_new_tokens=s.max_new_tokens), request.data, s.sizes, s.seed)
    pieces = {piece: FETCH[piece](source, steer, None, **kwargs) for piece, kwargs in method.pieces(params).items()}
    return method.plan(handle, params, SteeringContext(setup=setup, seed=s.seed, **pieces))


def adds_only(plan: SteeringPlan) -> bool:
    """Whether ``plan`` only adds fixed vectors at the last position (so it can share a batch, row by row)."""
    return all(isinstance(i, AddVectors) and i.positions == "last" for i in plan.interventions)


def row_vectors(plans: Sequence[SteeringPlan], n_prompts: int) -> AddRowVectors:
    """The plans' vectors stacked: rows ``c·N .. (c+1)·N − 1`` get plan ``c``'s vectors (zero elsewhere)."""
    layers = sorted({layer for p in plans for i in p.interventions for layer in i.vectors})
    some = next((w for p in plans for i in p.interventions for w in i.vectors.values()), None)
    W: dict[int, torch.Tensor] = {}
    for layer in layers:
        W[layer] = torch.zeros(len(plans) * n_prompts, some.shape[-1], dtype=some.dtype, device=some.device)
        for c, plan in enumerate(plans):
            for item in plan.interventions:
                if layer in item.vectors:
                    W[layer][c * n_prompts:(c + 1) * n_prompts] += item.vectors[layer]
    return AddRowVectors(W, "last")


def score_cell(handle: ModelHandle, request: SweepRequest, cell: Cell, plan: SteeringPlan | None,
               generated: list[Generated], tools: Instruments, elapsed: float) -> CellResult:
    """A cell's measures from its generated texts (module doc of :mod:`.metrics`)."""
    tok = handle.info.tokenizer
    scores = [score_text(handle, g.prompt_ids, g.new_ids, tools.readout) for g in generated]
    texts = [tok.decode(g.new_ids) for g in generated]
    judge = tools.judge.probability(texts) if tools.judge is not None else np.zeros(0)
    fluency = (np.asarray([lm_perplexity(tools.fluency, p, t) for p, t in zip(request.prompts, texts)])
               if tools.fluency is not None else np.zeros(0))
    interventions = plan.interventions if plan is not None else ()
    kl = next_token_kl(tools.neutral_base, next_token_logprobs(handle, tools.neutral_ids, interventions))
    return CellResult(
        **handle.result_fields(), method=cell.method, layer=cell.layer, strength=float(cell.strength),
        params=_plain(plan.params) if plan is not None else {}, dataset=request.data.name,
        prompts=list(request.prompts), texts=texts,
        new_tokens=np.asarray([len(g.new_ids) for g in generated], dtype=np.int64),
        perplexity=np.asarray([x.perplexity for x in scores]), readout=np.asarray([x.readout for x in scores]),
        probe=tools.probe.probability(np.stack([x.state for x in scores])), judge=judge, fluency=fluency,
        repetition=np.asarray([x.repetition for x in scores]), kl=kl, boundary=tools.boundary, probe_accuracy=float(tools.probe_accuracy),
        forward_passes=request.passes_per_cell(), elapsed_s=float(elapsed))


def batches(cells: Sequence[Cell], plans: dict[Cell, SteeringPlan], n_prompts: int) -> list[list[Cell]]:
    """Generation batches: cells whose plans only add vectors share calls (at most :data:`MAX_ROWS` rows);
    every other cell is a call of its own."""
    shared = [c for c in cells if adds_only(plans[c])]
    per_call = max(1, MAX_ROWS // max(1, n_prompts))
    groups = [shared[i:i + per_call] for i in range(0, len(shared), per_call)]
    return groups + [[c] for c in cells if not adds_only(plans[c])]


def run_cells(source: SteeringSource, handle: ModelHandle, request: SweepRequest, missing: Sequence[Cell],
              store: Callable[[Cell, CellResult], None], progress: ProgressFn | None = None) -> None:
    """Compute the ``missing`` cells (the baseline among them or not) and ``store`` each as it is done."""
    report = progress or (lambda fraction, message: None)
    s = request.settings
    setup = source.concept_setup(handle, request.data, s.sizes, s.seed, lambda f, m: report(0.02 * f, m))
    tools = instruments(handle, request, setup, report)
    settings = GenerationSettings(max_new_tokens=s.max_new_tokens)
    ids = [handle.info.encode(p) for p in request.prompts]
    N, done, total = len(ids), 0, len(missing)
    if request.baseline in missing:
        t0 = time.perf_counter()
        report(0.05, "Cell 1/%d: unsteered" % total)
        plain = generate(handle, ids, (), settings)
        store(request.baseline, score_cell(handle, request, request.baseline, None, plain, tools,
                                           time.perf_counter() - t0))
        done += 1
    steered = [c for c in missing if c != request.baseline]
    plans: dict[Cell, SteeringPlan] = {}
    for i, cell in enumerate(steered):
        report(0.05 + 0.15 * i / max(1, len(steered)), f"Planning {cell.describe()}")
        plans[cell] = plan_cell(source, handle, request, cell, setup)
    for group in batches(steered, plans, N):
        t0 = time.perf_counter()
        if len(group) == 1 and not adds_only(plans[group[0]]):
            out = generate(handle, ids, [copy.copy(i) for i in plans[group[0]].interventions], settings)
        else:
            out = generate(handle, ids * len(group), [row_vectors([plans[c] for c in group], N)], settings)
        share = (time.perf_counter() - t0) / len(group)
        for c, cell in enumerate(group):
            report(0.2 + 0.8 * done / total, f"Cell {done + 1}/{total}: {cell.describe()}")
            t1 = time.perf_counter()
            result = score_cell(handle, request, cell, plans[cell], out[c * N:(c + 1) * N], tools, 0.0)
            result.elapsed_s = share + time.perf_counter() - t1
            store(cell, result)
            done += 1
    report(1.0, "Done")


def _plain(value: Any) -> Any:
    """A plan's parameters as JSON (numpy numbers and arrays as Python ones)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
