"""The one facade that pages and the CLI call.

Each analysis: resolve the model (config, tokenizer, revision; no weights), tokenize, build the cache
key, return a hit at once; on a miss load the weights (one resident model per process, replaced when
another is asked for), compute under the service lock (two browser tabs cannot interleave work on the
model), store, return. Errors a user can cause arrive as :class:`~lldd_core.errors.LLDDError`.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from . import ranges
from .analysis.control import ANALYSIS as CONTROL
from .analysis.control import ControlResult, analyze_control
from .analysis.gains import (
    ABLATION,
    GainsAblation,
    GainsResult,
    GainsSetup,
    ablate_gains,
    ablation_values,
    analyze_gains,
    prepare_gains,
)
from .analysis.gains import ANALYSIS as GAINS
from .analysis.graph import ANALYSIS as GRAPH
from .analysis.graph import analyze_graph
from .analysis.graph import target_id as graph_target_id
from .analysis.graph_result import GraphResult
from .analysis.jacobian import ANALYSIS as JACOBIAN
from .analysis.jacobian import JacobianResult, analyze_jacobian
from .analysis.layers import ANALYSIS as LAYERS
from .analysis.layers import LayersResult, analyze_layers
from .analysis.spectrum import ANALYSIS as SPECTRUM
from .analysis.spectrum import METHODS, SpectrumResult, analyze_spectrum
from .concepts.catalog import load as load_dataset
from .concepts.data import ConceptData
from .demo import DEMO_CONFIGS, build_demo, demo_name, is_built, is_demo
from .errors import InputError, LLDDError, ResourceError
from .forward.views import SITES
from .models.loading import ModelHandle, ModelInfo, ModelSpec, is_out_of_memory, load_model, resolve_model
from .models.memory import MemoryEstimate, estimate_memory, weight_bytes
from .progress import ProgressFn
from .steering.core import (
    Generated,
    GenerationSettings,
    MeanJacobians,
    SteeringJacobian,
    SteeringResult,
    analyze_mean_jacobians,
    analyze_steering_jacobian,
    check_context,
    check_steering,
    compare,
    default_jacobian_layer,
    generate,
    plan_steering,
)
from .store.cache import ResultCache, UnavailableCache, open_cache
from .store.disk import CacheError
from .store.keys import make_key

R = TypeVar("R")
_log = logging.getLogger(__name__)


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
    def jacobian(
        self,
        spec: ModelSpec,
        prompt: str,
        *,
        layer: int | None = None,
        final_norm: bool = True,
        progress: ProgressFn | None = None,
    ) -> Computed[JacobianResult]:
        """Detached vs ordinary Jacobian of the last token's output (see :mod:`lldd_core.analysis.jacobian`)."""
        info = self.info(spec, progress)
        ids = info.encode(prompt)
        layer = info.n_layers if layer is None else ranges.LAYER.check(layer, hi=info.n_layers)
        params = {"layer": layer, "final_norm": bool(final_norm)}
        return self._cached(
            JACOBIAN,
            spec,
            info,
            ids,
            params,
            lambda h: analyze_jacobian(h, ids, layer=layer, final_norm=final_norm, progress=progress),
            progress,
        )

    def graph(
        self,
        spec: ModelSpec,
        prompt: str,
        *,
        target: str | None = None,
        node_threshold: float | None = 0.8,
        edge_threshold: float = 0.98,
        max_nodes: int | None = 1024,
        progress: ProgressFn | None = None,
    ) -> Computed[GraphResult]:
        """Exact attribution graph of the next-token logits (:mod:`lldd_core.analysis.graph`); ``target``: one token."""
        info = self.info(spec, progress)
        ids = info.encode(prompt)
        tid = None if target is None else graph_target_id(info, target)
        node_threshold = None if node_threshold is None else ranges.NODE_THRESHOLD.check(node_threshold)
        edge_threshold = ranges.EDGE_THRESHOLD.check(edge_threshold)
        max_nodes = None if max_nodes is None else ranges.MAX_NODES.check(max_nodes)
        params = {"target": tid, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                  "max_nodes": max_nodes}
        return self._cached(
            GRAPH, spec, info, ids, params,
            lambda h: analyze_graph(h, ids, target=tid, node_threshold=node_threshold, edge_threshold=edge_threshold,
                                    max_nodes=max_nodes, progress=progress),
            progress,
        )

    def spectrum(
        self,
        spec: ModelSpec,
        prompt: str,
        *,
        layer: int | None = None,
        final_norm: bool = True,
        k: int = 8,
        n_decode: int = 8,
        method: str = "auto",
        progress: ProgressFn | None = None,
    ) -> Computed[SpectrumResult]:
        """Top-``k`` spectra of every ``J_i`` with decoded tokens (:mod:`lldd_core.analysis.spectrum`)."""
        info = self.info(spec, progress)
        ids = info.encode(prompt)
        layer = info.n_layers if layer is None else ranges.LAYER.check(layer, hi=info.n_layers)
        k, n_decode = ranges.TOP_K.check(k, hi=info.d_model), ranges.DECODE.check(n_decode)
        if method not in METHODS:
            raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        params = {"layer": layer, "final_norm": bool(final_norm), "k": k, "n_decode": n_decode, "method": method}
        return self._cached(
            SPECTRUM, spec, info, ids, params,
            lambda h: analyze_spectrum(h, ids, layer=layer, final_norm=final_norm, k=k, n_decode=n_decode,
                                       method=method, progress=progress),
            progress,
        )

    def layers(
        self,
        spec: ModelSpec,
        prompt: str,
        *,
        k: int = 8,
        n_decode: int = 5,
        lens: bool = True,
        method: str = "auto",
        sites: tuple[str, ...] = SITES,
        progress: ProgressFn | None = None,
    ) -> Computed[LayersResult]:
        """Every layer's views of one prompt: spectra, stable ranks, decodings, emergence."""
        info = self.info(spec, progress)
        ids = info.encode(prompt)
        k, n_decode = ranges.TOP_K.check(k, hi=info.d_model), ranges.DECODE.check(n_decode)
        if method not in METHODS:
            raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        if isinstance(sites, str):
            sites = tuple(part.strip() for part in sites.split(","))
        unknown = [s for s in sites if s not in SITES]
        if unknown:
            raise InputError(f"Unknown site(s) {', '.join(map(repr, unknown))}: choose from {', '.join(SITES)}.")
        sites = tuple(s for s in SITES if s in set(sites))  # canonical order: one cache entry per set
        if not sites:
            raise InputError(f"Choose at least one site of {', '.join(SITES)}.")
        params = {"k": k, "n_decode": n_decode, "lens": bool(lens), "method": method, "sites": list(sites)}
        return self._cached(
            LAYERS, spec, info, ids, params,
            lambda h: analyze_layers(h, ids, sites=sites, k=k, n_decode=n_decode, lens=lens, method=method,
                                     progress=progress),
            progress,
        )

    @staticmethod
    def gains_params(data: ConceptData, order: int, eps: float, n_eval: int, complement: str, mode: str,
                      sizes: tuple[int, int, int], seed: int) -> dict[str, Any]:
        return {"dataset": data.name, "fingerprint": data.fingerprint(), "order": int(order), "eps": float(eps),
                "n_eval": int(n_eval), "complement": complement, "mode": mode, "sizes": [int(n) for n in sizes],
                "seed": int(seed)}

    def gains(
        self,
        spec: ModelSpec,
        dataset: str | ConceptData,
        *,
        order: int = 32,
        eps: float = 0.1,
        n_eval: int = 32,
        complement: str = "krylov",
        mode: str = "prompt",
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Computed[GainsResult]:
        """Predicted, measured and exact gain curves of a concept (:mod:`lldd_core.analysis.gains`), cached.

        ``dataset``: a name (built-in or hub, see :func:`lldd_core.concepts.catalog.list_datasets`) or
        loaded :class:`~lldd_core.concepts.data.ConceptData` (e.g. a user's file); the cache key holds
        the data's fingerprint, so an edited file is a miss.
        """
        info = self.info(spec, progress)
        order, eps, n_eval, sizes, seed = _gain_numbers(info, order, eps, n_eval, sizes, seed)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        params = self.gains_params(data, order, eps, n_eval, complement, mode, sizes, seed)
        return self._cached(
            GAINS, spec, info, [], params,
            lambda h: analyze_gains(h, data, order=order, eps=eps, n_eval=n_eval, complement=complement, mode=mode,
                                    sizes=sizes, seed=seed, progress=progress),
            progress,
        )

    def cached_gains(
        self,
        spec: ModelSpec,
        dataset: str | ConceptData,
        *,
        order: int = 32,
        eps: float = 0.1,
        n_eval: int = 32,
        complement: str = "krylov",
        mode: str = "prompt",
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
    ) -> GainsResult | None:
        """The stored result of :meth:`gains` with these settings, or ``None``; never loads weights or builds.

        Resolving a hub model needs its config (from the Hugging Face cache offline); that failing
        raises the usual explained :class:`~lldd_core.errors.LLDDError`.
        """
        if self.needs_build(spec):
            return None
        info = self.info(spec)
        try:
            order, eps, n_eval, sizes, seed = _gain_numbers(info, order, eps, n_eval, sizes, seed)
        except InputError:  # gains() refuses these settings (when asked to compute), so nothing was stored
            return None
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        params = self.gains_params(data, order, eps, n_eval, complement, mode, sizes, seed)
        key = make_key(GAINS, model=spec.model, revision=info.revision, dtype=spec.precision, input_ids=[], params=params)
        return self.cache.get(key)

    def gains_ablation(
        self,
        spec: ModelSpec,
        dataset: str | ConceptData,
        vary: str,
        values: list | tuple | None = None,
        *,
        order: int = 32,
        eps: float = 0.1,
        n_eval: int = 32,
        complement: str = "krylov",
        mode: str = "prompt",
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Computed[GainsAblation]:
        """Agreement as ``vary`` (``order``/``eps``/``complement``) sweeps ``values`` (:func:`~lldd_core.analysis.gains.ablate_gains`), cached."""
        info = self.info(spec, progress)
        order, eps, n_eval, sizes, seed = _gain_numbers(info, order, eps, n_eval, sizes, seed)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        values = ablation_values(vary, info.d_model, values)
        params = {**self.gains_params(data, order, eps, n_eval, complement, mode, sizes, seed),
                  "vary": vary, "values": values}
        return self._cached(
            ABLATION, spec, info, [], params,
            lambda h: ablate_gains(h, data, vary, values, order=order, eps=eps, n_eval=n_eval, complement=complement,
                                   mode=mode, sizes=sizes, seed=seed, progress=progress),
            progress,
        )


    # --- control and steering ---------------------------------------------------------------------
    def control(
        self,
        spec: ModelSpec,
        dataset: str | ConceptData,
        targets: list[float] | tuple[float, ...],
        *,
        order: int = 32,
        complement: str = "krylov",
        n_eval: int = 16,
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
        tol: float = 1e-2,
        progress: ProgressFn | None = None,
    ) -> Computed[ControlResult]:
        """LLV and heuristic schedules for each target ``Δy``, validated in the full model (:mod:`lldd_core.analysis.control`), cached."""
        info = self.info(spec, progress)
        order, _, n_eval, sizes, seed = _gain_numbers(info, order, 0.1, n_eval, sizes, seed)
        targets = ranges.check_list(targets, ranges.TARGET, max_len=ranges.MAX_TARGETS)
        tol = ranges.TOL.check(tol)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        params = {**self.gains_params(data, order, 0.0, n_eval, complement, "population", sizes, seed),
                  "targets": targets, "tol": float(tol)}
        return self._cached(
            CONTROL, spec, info, [], params,
            lambda h: analyze_control(h, data, targets, order=order, complement=complement, n_eval=n_eval, sizes=sizes,
                                      seed=seed, tol=tol, progress=progress),
            progress,
        )

    def _concept_setup(self, handle: ModelHandle, data: ConceptData, sizes: tuple[int, int, int], seed: int,
                       progress: ProgressFn | None) -> GainsSetup:
        """Directions and operating prompts of ``data`` on the resident model (memoized while it stays resident)."""
        key = (handle.spec, data.fingerprint(), tuple(sizes), seed)
        if key not in self._setups:
            self._setups[key] = prepare_gains(handle, data, n_eval=1, sizes=sizes, seed=seed, progress=progress)
        return self._setups[key]

    def steer(
        self,
        spec: ModelSpec,
        prompt: str,
        method: str,
        *,
        dataset: str | ConceptData | None = None,
        settings: GenerationSettings | None = None,
        layers: list[int] | None = None,
        strength: float | None = None,
        positions: str = "last",
        dy: float = 1.0,
        order: int = 32,
        steer_text: str = "",
        lam: float | None = None,
        variant: str = "blend",
        q: float = 10.0,
        r: float = 10.0,
        qf: float = 1.0,
        sizes: tuple[int, int, int] = (400, 200, 200),
        seed: int = 0,
        streamers: tuple[object | None, object | None] = (None, None),
        progress: ProgressFn | None = None,
    ) -> Computed[SteeringResult]:
        """Unsteered and steered continuations of ``prompt`` (:mod:`lldd_core.steering.core`), cached.

        The pieces are cached too: the steering phrase's Jacobians per phrase and layer, LQR's mean
        Jacobians per dataset. ``streamers`` (see :class:`~lldd_core.steering.core.CallbackStreamer`)
        receive the tokens as they are generated; a cache hit returns at once without streaming.
        """
        info = self.info(spec, progress)
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("The prompt is empty: type a few words to continue.")
        settings = (settings or GenerationSettings()).check()
        checked = check_steering(method, info.n_layers, info.d_model, layers=layers, strength=strength,
                                 positions=positions, dy=dy, order=order, steer_text=steer_text, lam=lam,
                                 variant=variant, q=q, r=r, qf=qf)
        layers, strength, dy, order, lam = (checked[k] for k in ("layers", "strength", "dy", "order", "lam"))
        q, r, qf = checked["q"], checked["r"], checked["qf"]
        sizes, seed = ranges.check_sizes(sizes), ranges.SEED.check(seed)
        check_context(len(info.encode(prompt)), settings.max_new_tokens, info.max_positions, spec.model)
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
        params = {"prompt": prompt, "method": method, "settings": dict(settings.__dict__), "layers": layers,
                  "strength": None if strength is None else float(strength), "positions": positions, "dy": float(dy), "order": int(order),
                  "steer_text": steer_text, "lam": lam, "variant": variant, "q": float(q), "r": float(r),
                  "qf": float(qf), "sizes": [int(n) for n in sizes], "seed": int(seed),
                  "dataset": data.name if data is not None else None,
                  "fingerprint": data.fingerprint() if data is not None else None}
        # only the options the method reads enter the key (more hits, and a CLI default cannot split entries)
        unused = {"additive": ("dy", "order", "q", "r", "qf", "steer_text", "lam", "variant"),
                  "llv": ("layers", "strength", "positions", "q", "r", "qf", "steer_text", "lam", "variant"),
                  "jacobian": ("dy", "order", "q", "r", "qf", "strength", "positions"),
                  "lqr": ("layers", "strength", "positions", "dy", "order", "steer_text", "variant")}
        for name in unused.get(method, ()):
            params[name] = None
        if method == "jacobian":
            params["operator"] = "affine"  # it adds the phrase's bias channel now: new entries, not old ones
        def compute(h: ModelHandle) -> SteeringResult:
            setup = self._concept_setup(h, data, sizes, seed, progress) if data is not None else None
            A = J = None
            chosen = layers
            if method == "lqr" and setup is not None:
                A = torch.as_tensor(self.mean_jacobians(spec, data, sizes=sizes, seed=seed, progress=progress).result.A)
            if method == "jacobian":
                J = self.steering_jacobian(spec, steer_text, layers[0] if layers else None, variant=variant,
                                           progress=progress).result
                chosen = [J.layer]
            plan = plan_steering(h, method, setup=setup, layers=chosen, strength=strength, positions=positions, dy=dy,
                                 order=order, steer_text=steer_text, lam=lam, variant=variant, q=q, r=r, qf=qf, A=A,
                                 J=J, seed=seed)
            if progress is not None:
                progress(0.5, "Generating")
            ids = info.encode(prompt)
            plain_key = (spec, tuple(ids), settings)
            if plain_key not in self._plain:
                self._plain[plain_key] = generate(h, [ids], (), settings, streamers[0])[0]
            return compare(h, prompt, plan, settings, dataset=data.name if data is not None else "",
                           streamers=streamers, plain=self._plain[plain_key])

        return self._cached("steer", spec, info, info.encode(prompt), params, compute, progress)

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
            lambda h: analyze_mean_jacobians(h, self._concept_setup(h, data, sizes, seed, progress),
                                             n_prompts=n_prompts, max_tokens=max_tokens, progress=progress),
            progress,
        )


def _gain_numbers(info: ModelInfo, order: int, eps: float, n_eval: int, sizes: tuple[int, int, int],
                  seed: int) -> tuple[int, float, int, tuple[int, int, int], int]:
    """The numeric gains settings checked by their :mod:`~lldd_core.ranges` ranges (the order against the
    model's hidden size), before they key the cache."""
    return (ranges.ORDER.check(order, hi=info.d_model), ranges.EPS.check(eps), ranges.N_EVAL.check(n_eval), ranges.check_sizes(sizes),
            ranges.SEED.check(seed))


_SERVICE: Service | None = None
_SERVICE_LOCK = threading.Lock()


def get_service() -> Service:
    """The process-wide service (one resident model shared by every session)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = Service()
        return _SERVICE
