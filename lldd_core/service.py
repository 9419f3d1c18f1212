"""The one facade that pages and the CLI call.

Each analysis: resolve the model (config, tokenizer, revision; no weights), tokenize, build the cache
key, return a hit at once; on a miss load the weights (one resident model per process, replaced when
another is asked for), compute under the service lock (two browser tabs cannot interleave work on the
model), store, return. Errors a user can cause arrive as :class:`~lldd_core.errors.LLDDError`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from . import ranges
from .analysis.ablation import ABLATION, GainsAblation, ablate_gains, ablation_values
from .analysis.control import ANALYSIS as CONTROL
from .analysis.control import ControlResult, analyze_control
from .analysis.gains import ANALYSIS as GAINS
from .analysis.gains import GainsResult, GainsSetup, analyze_gains, prepare_gains
from .analysis.graph import ANALYSIS as GRAPH
from .analysis.graph import analyze_graph, check_graph_family
from .analysis.graph import target_id as graph_target_id
from .analysis.graph_intervention import ANALYSIS as GRAPH_INTERVENTION
from .analysis.graph_intervention import (
    Factors,
    InterventionResult,
    analyze_intervention,
    check_intervention,
    intervention_params,
)
from .analysis.graph_result import GraphResult
from .analysis.jacobian import ANALYSIS as JACOBIAN
from .analysis.jacobian import JacobianResult, analyze_jacobian
from .analysis.layers import ANALYSIS as LAYERS
from .analysis.layers import LayersResult, analyze_layers
from .analysis.settings import (
    ControlSettings,
    GainsSettings,
    GraphSettings,
    JacobianSettings,
    LayersSettings,
    SpectrumSettings,
)
from .analysis.spectrum import ANALYSIS as SPECTRUM
from .analysis.spectrum import SpectrumResult, analyze_spectrum
from .concepts.catalog import load as load_dataset
from .concepts.data import ConceptData
from .demo import DEMO_CONFIGS, build_demo, demo_name, is_built, is_demo
from .errors import InputError, LLDDError, ResourceError
from .models.arch import text_config
from .models.loading import ModelHandle, ModelInfo, ModelSpec, is_out_of_memory, load_model, resolve_model
from .models.memory import MemoryEstimate, estimate_memory, weight_bytes
from .progress import ProgressFn
from .steering.compare import SteeringResult
from .steering.generate import Generated, GenerationSettings, generate
from .steering.lab.answers import LayerPrediction, SweepResult, assemble, predict_layers
from .steering.lab.settings import SweepSettings
from .steering.lab.sweep import ANALYSIS as SWEEP_CELL
from .steering.lab.sweep import CellResult, run_cells, sweep_request
from .steering.pieces import (
    MeanJacobians,
    SteeringJacobian,
    analyze_mean_jacobians,
    analyze_steering_jacobian,
    default_jacobian_layer,
)
from .steering.service_steps import run_steering, steer_request
from .store.cache import ResultCache, UnavailableCache, open_cache
from .store.disk import CacheError
from .store.keys import make_key

R = TypeVar("R")
_log = logging.getLogger(__name__)
#: Set by :func:`cache_only` for the calls made inside it (per thread / context, so other sessions compute).
_CACHE_ONLY: ContextVar[bool] = ContextVar("lldd_cache_only", default=False)


class NotCachedError(LLDDError):
    """Inside :func:`cache_only`, the requested result is not stored (nothing was loaded or computed)."""


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """Inside: every cached analysis returns its stored result or raises :class:`NotCachedError`, never loads
    weights or computes (a permalink shows a stored result, and never starts a long computation)."""
    token = _CACHE_ONLY.set(True)
    try:
        yield
    finally:
        _CACHE_ONLY.reset(token)


@dataclass
class Computed(Generic[R]):
    result: R
    cache_hit: bool
    #: Why a computed result was not stored (a damaged, unwritable or full cache); shown beside it.
    warning: str | None = None


class Service:
    """Owns the resident model, the result cache and the lock that serializes model work."""

    def __init__(self, cache: ResultCache | UnavailableCache | None = None) -> None:
        # A cache that cannot be opened does not stop the analyses: they compute and say so.
        self.cache = cache if cache is not None else open_cache()
        self._lock = threading.RLock()
        self._handle: ModelHandle | None = None
        self._infos: dict[ModelSpec, ModelInfo] = {}
        # per resident model: concept setups and unsteered generations, reused across steering calls
        self._setups: dict[tuple, GainsSetup] = {}
        self._plain: dict[tuple, Generated] = {}
        self._weights: dict[ModelSpec, tuple[int, int]] = {}

    # --- models --------------------------------------------------------------------------------
    def info(self, spec: ModelSpec, progress: ProgressFn | None = None) -> ModelInfo:
        """Config, tokenizer and resolved revision (memoized per spec; no weights loaded).

        A demo model (``demo:<name>``) that is not built yet is built first, reporting ``progress``.
        """
        with self._lock:
            if spec not in self._infos:
                self._infos[spec] = resolve_model(spec, self.cache.memo(), progress)  # builds a missing demo
            return self._infos[spec]

    def needs_build(self, spec: ModelSpec) -> bool:
        """True for a known demo model that is not built yet (the first use will build it)."""
        return is_demo(spec.model) and demo_name(spec.model) in DEMO_CONFIGS and not is_built(demo_name(spec.model))

    def ensure_demo(self, spec: ModelSpec, progress: ProgressFn | None = None) -> None:
        """Build the demo model ``spec`` names if it is missing (a few minutes on a CPU, once)."""
        with self._lock:
            if self.needs_build(spec):
                build_demo(demo_name(spec.model), progress=progress)

    def handle(self, spec: ModelSpec, progress: ProgressFn | None = None) -> ModelHandle:
        """The resident model for ``spec``, loading it (and dropping any other) if needed."""
        with self._lock:
            if self._handle is not None and self._handle.spec == spec:
                return self._handle
            self.unload()
            estimate = self.memory(spec)
            if estimate is not None and estimate.warning:
                _log.warning(estimate.warning)  # the CLI shows it on stderr; pages show it in the sidebar
            if progress is not None:
                progress(0.0, f"Loading {spec.model} ({spec.precision})")
            self._handle = load_model(self.info(spec))  # load errors arrive explained
            return self._handle

    def memory(self, spec: ModelSpec, tokens: int = 128) -> MemoryEstimate | None:
        """What ``spec`` will need and what its device has (:mod:`lldd_core.models.memory`), before loading;
        ``None`` for a demo model that is not built yet. Resolving errors raise as in :meth:`info`."""
        if self.needs_build(spec):
            return None
        info = self.info(spec)
        try:
            with self._lock:
                if spec not in self._weights:
                    self._weights[spec] = weight_bytes(info)
            return estimate_memory(info, tokens, weights=self._weights[spec])
        except Exception as err:  # noqa: BLE001  (an estimate must never stop a model from loading)
            _log.info("no memory estimate for %s: %s", spec.model, err)
            return None

    @property
    def resident(self) -> ModelHandle | None:
        return self._handle

    def unload(self) -> None:
        with self._lock:
            self._handle = None
            self._setups.clear()
            self._plain.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # --- the cached-compute pattern --------------------------------------------------------------
    def _cached(
        self,
        analysis: str,
        spec: ModelSpec,
        info: ModelInfo,
        input_ids: list[int],
        params: dict[str, Any],
        compute: Callable[[ModelHandle], R],
        progress: ProgressFn | None,
    ) -> Computed[R]:
        key = make_key(analysis, model=spec.model, revision=info.revision, dtype=spec.precision, input_ids=input_ids, params=params)
        if isinstance(self.cache, UnavailableCache):
            self.cache = open_cache()  # the folder or setting may have been fixed meanwhile
        hit = self.cache.get(key)
        if hit is not None:
            return Computed(hit, True)
        if _CACHE_ONLY.get():
            raise NotCachedError(f"No stored '{analysis}' result for these settings.")
        with self._lock:
            hit = self.cache.get(key)  # another session may have computed it while we waited
            if hit is not None:
                return Computed(hit, True)
            handle = self.handle(spec, progress)
            try:
                with handle.lock:
                    result = compute(handle)
            except LLDDError:
                raise
            except Exception as err:
                if is_out_of_memory(err):
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    raise ResourceError(
                        f"Out of memory during '{analysis}': shorten the prompt, use a lower precision, or a bigger device."
                    ) from err
                raise
            try:
                self.cache.set(key, result)  # validates first: a corrupt result raises, is neither shown nor stored
            except CacheError as err:
                _log.info("not cached: %s", err)
                return Computed(result, False, f"This result was not cached. {err}")
            return Computed(result, False)

    # --- analyses -------------------------------------------------------------------------------
    def _prompt(self, spec: ModelSpec, prompt: str, progress: ProgressFn | None) -> tuple[ModelInfo, list[int]]:
        """The model's info (config and tokenizer, no weights) and ``prompt``'s token ids."""
        info = self.info(spec, progress)
        return info, info.encode(prompt)

    # Each takes its settings object (or its fields as keywords, for scripts), checks it against the
    # model's config before the key is built, and keys the cache with the settings' cache_params().
    def jacobian(self, spec: ModelSpec, prompt: str, settings: JacobianSettings | None = None, *,
                 progress: ProgressFn | None = None, **overrides: Any) -> Computed[JacobianResult]:
        """Detached vs ordinary Jacobian of the last token's output (see :mod:`lldd_core.analysis.jacobian`)."""
        info, ids = self._prompt(spec, prompt, progress)
        s = JacobianSettings.resolve(settings, overrides).check(info.n_layers)
        return self._cached(JACOBIAN, spec, info, ids, s.cache_params(), lambda h: analyze_jacobian(
            h, ids, layer=s.layer, final_norm=s.final_norm, progress=progress), progress)

    def graph(self, spec: ModelSpec, prompt: str, settings: GraphSettings | None = None, *,
              progress: ProgressFn | None = None, **overrides: Any) -> Computed[GraphResult]:
        """Exact attribution graph of the next-token logits (:mod:`lldd_core.analysis.graph`); ``target``: one token."""
        info, ids = self._prompt(spec, prompt, progress)
        check_graph_family(info.adapter)  # before any weight is loaded
        s = GraphSettings.resolve(settings, overrides)
        tid = None if s.target is None else graph_target_id(info, s.target)
        s = s.check()
        return self._cached(GRAPH, spec, info, ids, s.cache_params(tid), lambda h: analyze_graph(
            h, ids, target=tid, node_threshold=s.node_threshold, edge_threshold=s.edge_threshold,
            max_nodes=s.max_nodes, n_decode=s.n_decode, progress=progress), progress)

    def graph_intervention(self, spec: ModelSpec, prompt: str, factors: Factors, targets: list[int], *,
                           progress: ProgressFn | None = None) -> Computed[InterventionResult]:
        """Scale neurons ``(layer, position, index)`` of ``prompt``'s graph: the target logits' frozen and measured
        change (:mod:`lldd_core.analysis.graph_intervention`), to set beside the graph's prediction."""
        info, ids = self._prompt(spec, prompt, progress)
        check_graph_family(info.adapter)
        f, t = check_intervention(factors, targets, info.n_layers, len(ids),
                                  int(getattr(text_config(info.config), "vocab_size", 0) or len(info.tokenizer)))
        return self._cached(GRAPH_INTERVENTION, spec, info, ids, intervention_params(f, t),
                            lambda h: analyze_intervention(h, ids, f, t), progress)

    def spectrum(self, spec: ModelSpec, prompt: str, settings: SpectrumSettings | None = None, *,
                 progress: ProgressFn | None = None, **overrides: Any) -> Computed[SpectrumResult]:
        """Top-``k`` spectra of every ``J_i`` with decoded tokens (:mod:`lldd_core.analysis.spectrum`)."""
        info, ids = self._prompt(spec, prompt, progress)
        s = SpectrumSettings.resolve(settings, overrides).check(info.n_layers, info.d_model).for_prompt(len(ids))
        return self._cached(SPECTRUM, spec, info, ids, s.cache_params(), lambda h: analyze_spectrum(
            h, ids, layer=s.layer, final_norm=s.final_norm, k=s.k, n_decode=s.n_decode, method=s.method,
            positions=s.positions, progress=progress), progress)

    def layers(self, spec: ModelSpec, prompt: str, settings: LayersSettings | None = None, *,
               progress: ProgressFn | None = None, **overrides: Any) -> Computed[LayersResult]:
        """Every layer's views of one prompt: spectra, stable ranks, decodings, emergence."""
        info, ids = self._prompt(spec, prompt, progress)
        s = LayersSettings.resolve(settings, overrides).check(info.d_model)
        return self._cached(LAYERS, spec, info, ids, s.cache_params(), lambda h: analyze_layers(
            h, ids, sites=s.sites, k=s.k, n_decode=s.n_decode, lens=s.lens, method=s.method, progress=progress),
            progress)

    def gains(self, spec: ModelSpec, dataset: str | ConceptData, settings: GainsSettings | None = None, *,
              progress: ProgressFn | None = None, **overrides: Any) -> Computed[GainsResult]:
        """Predicted, measured and exact gain curves of a concept (:mod:`lldd_core.analysis.gains`), cached.

        ``dataset``: a name (built-in or hub, see :func:`lldd_core.concepts.catalog.list_datasets`) or
        loaded :class:`~lldd_core.concepts.data.ConceptData` (e.g. a user's file); the cache key holds
        the data's fingerprint, so an edited file is a miss.
        """
        info = self.info(spec, progress)
        s = GainsSettings.resolve(settings, overrides).check(info.d_model)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        return self._cached(GAINS, spec, info, [], s.cache_params(data),
                            lambda h: analyze_gains(h, data, s, progress=progress), progress)

    def cached_gains(self, spec: ModelSpec, dataset: str | ConceptData, settings: GainsSettings | None = None,
                     **overrides: Any) -> GainsResult | None:
        """The stored result of :meth:`gains` with these settings, or ``None``; never loads weights or builds.

        Resolving a hub model needs its config (from the Hugging Face cache offline); that failing
        raises the usual explained :class:`~lldd_core.errors.LLDDError`.
        """
        if self.needs_build(spec):
            return None
        info = self.info(spec)
        try:
            s = GainsSettings.resolve(settings, overrides).check(info.d_model)
        except InputError:  # gains() refuses these settings (when asked to compute), so nothing was stored
            return None
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        key = make_key(GAINS, model=spec.model, revision=info.revision, dtype=spec.precision, input_ids=[],
                       params=s.cache_params(data))
        return self.cache.get(key)

    def gains_ablation(self, spec: ModelSpec, dataset: str | ConceptData, vary: str, values: list | tuple | None = None,
                       settings: GainsSettings | None = None, *, progress: ProgressFn | None = None,
                       **overrides: Any) -> Computed[GainsAblation]:
        """Agreement as ``vary`` (``order``/``eps``/``complement``) sweeps ``values`` (:func:`~lldd_core.analysis.ablation.ablate_gains`), cached."""
        info = self.info(spec, progress)
        s = GainsSettings.resolve(settings, overrides).check(info.d_model)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        values = ablation_values(vary, info.d_model, values)
        params = {**s.cache_params(data), "vary": vary, "values": values}
        return self._cached(ABLATION, spec, info, [], params,
                            lambda h: ablate_gains(h, data, vary, values, s, progress=progress), progress)

    # --- control and steering ---------------------------------------------------------------------
    def control(self, spec: ModelSpec, dataset: str | ConceptData, targets: list[float] | tuple[float, ...] | None = None,
                settings: ControlSettings | None = None, *, progress: ProgressFn | None = None,
                **overrides: Any) -> Computed[ControlResult]:
        """LLV and heuristic schedules for each target ``Δy``, validated in the full model (:mod:`lldd_core.analysis.control`), cached."""
        info = self.info(spec, progress)
        if targets is not None:
            overrides["targets"] = targets
        s = ControlSettings.resolve(settings, overrides).check(info.d_model)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        return self._cached(CONTROL, spec, info, [], s.cache_params(data),
                            lambda h: analyze_control(h, data, settings=s, progress=progress), progress)

    def concept_setup(self, handle: ModelHandle, data: ConceptData, sizes: tuple[int, int, int], seed: int,
                      progress: ProgressFn | None) -> GainsSetup:
        """Directions and operating prompts of ``data`` on the resident model (memoized while it stays resident)."""
        key = (handle.spec, data.fingerprint(), tuple(sizes), seed)
        if key not in self._setups:
            self._setups[key] = prepare_gains(handle, data, n_eval=1, sizes=sizes, seed=seed, progress=progress)
        return self._setups[key]

    def unsteered(self, handle: ModelHandle, ids: list[int], settings: GenerationSettings,
                  streamer: object | None = None) -> Generated:
        """The unsteered continuation of ``ids`` (memoized while the model stays resident: comparing several
        methods generates it once)."""
        key = (handle.spec, tuple(ids), settings)
        if key not in self._plain:
            self._plain[key] = generate(handle, [ids], (), settings, streamer)[0]
        return self._plain[key]

    def steer(
        self,
        spec: ModelSpec,
        prompt: str,
        method: str,
        params: Any = None,
        *,
        dataset: str | ConceptData | None = None,
        settings: GenerationSettings | None = None,
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
        streamers: tuple[object | None, object | None] = (None, None),
        progress: ProgressFn | None = None,
    ) -> Computed[SteeringResult]:
        """Unsteered and steered continuations of ``prompt`` by ``method`` (a name of
        :mod:`lldd_core.steering.methods.registry`) with ``params`` (its ``Params``, a dict of its fields, or
        ``None``: its defaults), cached (:mod:`lldd_core.steering.service_steps`).

        The pieces a method declares are cached too: the steering phrase's Jacobians per phrase and layer,
        LQR's mean Jacobians per dataset. ``streamers`` (see :class:`~lldd_core.steering.generate.CallbackStreamer`)
        receive the tokens as they are generated; a cache hit returns at once without streaming.
        """
        info = self.info(spec, progress)
        request = steer_request(info, spec, prompt, method, params, dataset, settings, sizes, seed)
        return self._cached("steer", spec, info, info.encode(prompt), request.cache_params(),
                            lambda h: run_steering(self, h, request, streamers, progress), progress)

    def steer_sweep(self, spec: ModelSpec, dataset: str | ConceptData, settings: SweepSettings | None = None, *,
                    progress: ProgressFn | None = None, **overrides: Any) -> Computed[SweepResult]:
        """The Steering lab's sweep (:mod:`lldd_core.steering.lab`): every cell cached on its own, so a widened
        sweep computes only its new cells and an interrupted one resumes; the answers assembled from the cells."""
        t0 = time.perf_counter()
        info = self.info(spec, progress)
        request = sweep_request(info, spec, dataset, SweepSettings.resolve(settings, overrides))
        s = request.settings

        def key(cell: Any) -> str:
            return make_key(SWEEP_CELL, model=spec.model, revision=info.revision, dtype=spec.precision, input_ids=[],
                            params=request.key_params(cell))

        order = [request.baseline, *request.cells]
        found: dict[Any, CellResult] = {c: r for c in order if (r := self.cache.get(key(c))) is not None}
        missing = [c for c in order if c not in found]
        if missing and _CACHE_ONLY.get():
            raise NotCachedError(f"No stored Steering lab result for {len(missing)} of its {len(order)} settings.")
        prediction = self._cached(
            "steer-sweep-prediction", spec, info, [], {"dataset": request.data.name,
                                                       "fingerprint": request.data.fingerprint(),
                                                       "sizes": list(s.sizes), "seed": s.seed, "order": s.order},
            lambda h: predict_layers(self.concept_setup(h, request.data, s.sizes, s.seed, progress), s.order, s.seed),
            progress)
        warnings = [prediction.warning] if prediction.warning else []
        if missing:
            def store(cell: Any, result: CellResult) -> None:
                found[cell] = result
                try:
                    self.cache.set(key(cell), result)
                except CacheError as err:
                    warnings.append(f"Some cells were not cached. {err}")

            with self._lock:
                handle = self.handle(spec, progress)
                with handle.lock:
                    run_cells(self, handle, request, missing, store, progress)
        prediction_result: LayerPrediction = prediction.result
        base = found[request.baseline]
        result = assemble(_stamp(base), request, found, base, prediction_result, len(missing), time.perf_counter() - t0)
        return Computed(result, not missing, warnings[0] if warnings else None)

    def steering_jacobian(self, spec: ModelSpec, steer_text: str, layer: int | None = None, variant: str = "blend",
                          progress: ProgressFn | None = None) -> Computed[SteeringJacobian]:
        """The steering phrase's detached Jacobians and bias channel at ``x_layer`` (default: two thirds of the
        depth), with the final norm applied for the ``reference`` variant; cached."""
        info = self.info(spec, progress)
        layer = (default_jacobian_layer(info.n_layers, variant) if layer is None
                 else ranges.JACOBIAN_LAYER.check(layer, hi=info.n_layers))
        final_norm = variant == "reference"
        ids = info.encode(steer_text) if steer_text.strip() else []
        return self._cached("steer-jacobian", spec, info, ids, {"layer": layer, "final_norm": final_norm},
                            lambda h: analyze_steering_jacobian(h, steer_text, layer, final_norm), progress)

    def mean_jacobians(self, spec: ModelSpec, dataset: str | ConceptData, *, n_prompts: int = 50, max_tokens: int = 24,
                       sizes: tuple[int, int, int] = (400, 200, 200), seed: int = 0,
                       progress: ProgressFn | None = None) -> Computed[MeanJacobians]:
        """LQR's dynamics: mean last-token block Jacobians of the operating prompts, cached per model and dataset."""
        info = self.info(spec, progress)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        params = {"dataset": data.name, "fingerprint": data.fingerprint(), "n_prompts": int(n_prompts),
                  "max_tokens": int(max_tokens), "sizes": [int(n) for n in sizes], "seed": int(seed)}
        return self._cached(
            "mean-jacobians", spec, info, [], params,
            lambda h: analyze_mean_jacobians(h, self.concept_setup(h, data, sizes, seed, progress),
                                             n_prompts=n_prompts, max_tokens=max_tokens, progress=progress),
            progress,
        )


def _stamp(result: Any) -> dict:
    """The model stamp fields of a stored result (model, revision, dtype, family)."""
    return {name: getattr(result, name) for name in ("model", "revision", "dtype", "family")}


_SERVICE: Service | None = None
_SERVICE_LOCK = threading.Lock()


def get_service() -> Service:
    """The process-wide service (one resident model shared by every session)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = Service()
        return _SERVICE
