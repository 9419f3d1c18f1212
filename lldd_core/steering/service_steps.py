"""The service's steering steps: a request checked into its cache params, then planned and compared.

:func:`steer_request` validates everything before any weights load (so a bad setting never loads a
model) and builds the ``steer`` cache params; :func:`run_steering` fetches what the method declares (the
concept, the cached pieces of :data:`~lldd_core.steering.methods.base.PIECES`) from the service and
compares the steered continuation with the unsteered one, which the service memoizes across methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .. import ranges as R
from ..analysis.gains import GainsSetup
from ..concepts.catalog import load as load_dataset
from ..concepts.data import ConceptData
from ..errors import InputError
from ..models.loading import ModelHandle, ModelInfo, ModelSpec
from ..progress import ProgressFn
from .compare import ReadoutScale, SteeringResult, compare
from .generate import Generated, GenerationSettings, check_context
from .methods.base import KEY_FIELDS, SteeringContext, SteeringMethod
from .methods.registry import get
from .pieces import MeanJacobians, SteeringJacobian


class SteeringSource(Protocol):
    """What the steps ask of the service: the concept on the resident model, the unsteered text and the
    cached pieces (each a ``Computed`` result)."""

    def concept_setup(self, handle: ModelHandle, data: ConceptData, sizes: tuple[int, int, int], seed: int,
                      progress: ProgressFn | None) -> GainsSetup: ...

    def unsteered(self, handle: ModelHandle, ids: list[int], settings: GenerationSettings,
                  streamer: object | None = None) -> Generated: ...

    def mean_jacobians(self, spec: ModelSpec, dataset: ConceptData, *, sizes: tuple[int, int, int], seed: int,
                       progress: ProgressFn | None) -> Any: ...

    def steering_jacobian(self, spec: ModelSpec, steer_text: str, layer: int | None, variant: str,
                          progress: ProgressFn | None) -> Any: ...


@dataclass(frozen=True)
class SteerRequest:
    """One checked ``steer`` call: the method and its checked settings, what to generate, which concept."""

    spec: ModelSpec
    prompt: str
    method: SteeringMethod
    params: Any
    settings: GenerationSettings
    data: ConceptData | None
    sizes: tuple[int, int, int]
    seed: int

    def cache_params(self) -> dict[str, Any]:
        """The ``steer`` key's params: the call's, then :data:`KEY_FIELDS` (``null``) overlaid by the method's."""
        data = self.data
        return {"prompt": self.prompt, "method": self.method.name, "settings": dict(self.settings.__dict__),
                **dict.fromkeys(KEY_FIELDS), **self.method.cache_params(self.params),
                "sizes": [int(n) for n in self.sizes], "seed": int(self.seed),
                "dataset": data.name if data is not None else None,
                "fingerprint": data.fingerprint() if data is not None else None}


def steer_request(info: ModelInfo, spec: ModelSpec, prompt: str, method: str, params: Any,
                  dataset: str | ConceptData | None, settings: GenerationSettings | None,
                  sizes: tuple[int, int, int], seed: int) -> SteerRequest:
    """Every input of a ``steer`` call checked against ``info``'s model (the prompt, the generation settings,
    the method's settings, the splits, the context), the dataset loaded; else :class:`InputError`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("The prompt is empty: type a few words to continue.")
    settings = (settings or GenerationSettings()).check()
    chosen = get(method)
    checked = chosen.check(chosen.params(params), info.n_layers, info.d_model)
    sizes, seed = R.check_sizes(sizes), R.SEED.check(seed)
    check_context(len(info.encode(prompt)), settings.max_new_tokens, info.max_positions, spec.model)
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if chosen.needs_dataset and data is None:
        raise InputError(f"The {chosen.name} method needs a concept dataset.")
    return SteerRequest(spec, prompt, chosen, checked, settings, data, sizes, seed)


def _mean_jacobians(source: SteeringSource, request: SteerRequest, progress: ProgressFn | None) -> torch.Tensor:
    if request.data is None:
        raise InputError(f"The {request.method.name} method needs a concept dataset.")
    computed = source.mean_jacobians(request.spec, request.data, sizes=request.sizes, seed=request.seed,
                                     progress=progress)
    result: MeanJacobians = computed.result
    return torch.as_tensor(result.A)


def _steering_jacobian(source: SteeringSource, request: SteerRequest, progress: ProgressFn | None, *,
                       steer_text: str, layer: int | None, variant: str) -> SteeringJacobian:
    return source.steering_jacobian(request.spec, steer_text, layer, variant, progress).result


#: How each declared piece is fetched (cached by the service), by its name in the context.
FETCH: dict[str, Callable[..., Any]] = {"mean_jacobians": _mean_jacobians, "steering_jacobian": _steering_jacobian}


def run_steering(source: SteeringSource, handle: ModelHandle, request: SteerRequest,
                 streamers: tuple[object | None, object | None], progress: ProgressFn | None) -> SteeringResult:
    """Plan ``request``'s method with the concept and the pieces it declares, then compare (under the model lock)."""
    data = request.data
    setup = source.concept_setup(handle, data, request.sizes, request.seed, progress) if data is not None else None
    pieces = {piece: FETCH[piece](source, request, progress, **kwargs)
              for piece, kwargs in request.method.pieces(request.params).items()}
    context = SteeringContext(setup=setup, seed=request.seed, **pieces)
    plan = request.method.plan(handle, request.params, context)
    if progress is not None:
        progress(0.5, "Generating")
    plain = source.unsteered(handle, handle.info.encode(request.prompt), request.settings, streamers[0])
    return compare(handle, request.prompt, plan, request.settings, dataset=data.name if data is not None else "",
                   split_sizes=dict(setup.splits.per_class) if setup is not None else None,
                   streamers=streamers, plain=plain, scale=readout_scale(setup))


def readout_scale(setup: GainsSetup | None) -> ReadoutScale | None:
    """The concept's classes and its class means' readouts ``v_Lᵀ μ_c`` at ``x_L`` (the verdicts' boundary)."""
    if setup is None or setup.class_means is None:
        return None
    L = setup.handle.n_layers
    v = setup.directions[L]
    means = tuple(float(setup.class_means[c, L] @ v) for c in range(2))
    return ReadoutScale((str(setup.data.classes[0]), str(setup.data.classes[1])), means)
