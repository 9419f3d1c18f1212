"""One prompt continued unsteered and steered by a plan, with the concept readout along both texts.

A :class:`SteeringPlan` is what a steering method (:mod:`lldd_core.steering.methods`) prepares once:
its interventions, the readout direction and the parameters it resolved. :func:`compare` runs it.

The *verdict* of a text is the side of the concept's decision boundary its mean readout lies on: the
boundary is the midpoint ``v_Lᵀ(μ_1 + μ_0)/2`` of the two class means of the concept split at ``x_L``
(:class:`ReadoutScale`). A text *loops* when it repeats a 3-gram of tokens (:mod:`.loops`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..forward.interventions import Intervention
from ..models.loading import ModelHandle
from ..store.results import ModelStamp, result_type
from .generate import DEFAULT_SETTINGS, Generated, GenerationSettings, generate, readout_along
from .loops import repeated_ngram


@dataclass(frozen=True)
class ReadoutScale:
    """The concept's classes and their mean readouts ``v_Lᵀ μ_1``, ``v_Lᵀ μ_0`` at ``x_L`` (label 1 first)."""

    classes: tuple[str, str]
    means: tuple[float, float]


@result_type
class SteeringResult(ModelStamp):
    """One prompt continued unsteered and steered by one method, with the concept readout along both."""

    SUMMARY_ARRAYS: ClassVar[tuple[str, ...]] = ("readout_unsteered", "readout_steered", "schedule")

    prompt: str
    method: str
    params: dict  # the method's settings as applied (its Params, defaults resolved)
    settings: dict  # GenerationSettings
    dataset: str
    unsteered: str
    steered: str
    unsteered_tokens: list
    steered_tokens: list
    elapsed_s: float
    readout_unsteered: np.ndarray  # [n_unsteered] v_L^T x_L per generated token, as the unsteered model reads it
    readout_steered: np.ndarray  # [n_steered]
    schedule: np.ndarray  # [L] per-layer amplitudes applied (additive / llv; empty otherwise)
    classes: list  # [label 1 name, label 0 name] of the concept ([] without one)
    class_readouts: list  # [v_L^T μ_1, v_L^T μ_0]: the class means as the readout sees them ([] without a concept)
    steered_loop: str  # the 3-gram of tokens the steered text repeats ("" when it does not loop)
    unsteered_loop: str  # the same for the unsteered text (the model's own decoding can loop too)
    #: per class: concept / operating / evaluation examples of the concept's splits as used (empty without one)
    split_sizes: dict = field(default_factory=dict)

    @property
    def boundary(self) -> float:
        """The decision boundary ``v_Lᵀ(μ_1 + μ_0)/2`` (NaN without a concept)."""
        return float(np.mean(self.class_readouts)) if len(self.class_readouts) == 2 else float("nan")

    def verdict(self, readout: np.ndarray) -> str:
        """The class whose side of the boundary the mean of ``readout`` lies on (``""`` without a concept)."""
        if len(self.class_readouts) != 2 or not np.asarray(readout).size or not self.classes:
            return ""
        # v_L = E_L/‖E_L‖ with E_L = μ_1 − μ_0: label 1 (the first class) reads above the boundary
        return str(self.classes[0 if float(np.mean(readout)) > self.boundary else 1])

    def summary_extra(self) -> dict:
        """``boundary``, the ``verdict`` of both texts and whether the steered one ``loops`` (CLI JSON)."""
        boundary = self.boundary
        return {"boundary": boundary if np.isfinite(boundary) else None, "loops": bool(self.steered_loop),
                "verdict": {"unsteered": self.verdict(self.readout_unsteered),
                            "steered": self.verdict(self.readout_steered)}}


@dataclass
class SteeringPlan:
    """Everything one method needs, prepared once (directions, gains, Jacobians) and reused across prompts.

    ``readout``: ``v_L`` of the concept (``None`` without a concept dataset); ``schedule``: ``[L]``
    per-layer amplitudes (empty for methods without one); ``params``: the settings as resolved
    (defaults filled in), reported with the result.
    """

    method: str
    interventions: list[Intervention]
    readout: torch.Tensor | None
    schedule: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: dict = field(default_factory=dict)


def compare(
    handle: ModelHandle,
    prompt: str,
    plan: SteeringPlan,
    settings: GenerationSettings = DEFAULT_SETTINGS,
    *,
    dataset: str = "",
    split_sizes: dict | None = None,
    streamers: tuple[object | None, object | None] = (None, None),
    plain: Generated | None = None,
    scale: ReadoutScale | None = None,
) -> SteeringResult:
    """Generate ``prompt``'s continuation unsteered and steered by ``plan``; readouts along both.

    ``plain``: the unsteered continuation if already generated with these settings (it does not
    depend on the method, so comparing several methods generates it once); ``scale``: the concept's
    classes and class-mean readouts (the verdicts' boundary).
    """
    if not prompt.strip():
        raise InputError("The prompt is empty: type a few words to continue.")
    t0 = time.perf_counter()
    ids = handle.info.encode(prompt)
    if plain is None:
        plain = generate(handle, [ids], (), settings, streamers[0])[0]
    steered = generate(handle, [ids], plan.interventions, settings, streamers[1])[0]
    tok = handle.info.tokenizer
    empty = np.zeros(0)
    plain_tokens, steered_tokens = handle.info.token_strings(plain.new_ids), handle.info.token_strings(steered.new_ids)
    return SteeringResult(
        **handle.result_fields(), prompt=prompt, method=plan.method, params=plan.params,
        settings=settings.__dict__.copy(), dataset=dataset,
        unsteered=tok.decode(plain.new_ids), steered=tok.decode(steered.new_ids),
        unsteered_tokens=plain_tokens, steered_tokens=steered_tokens,
        elapsed_s=time.perf_counter() - t0,
        readout_unsteered=readout_along(handle, plain, plan.readout) if plan.readout is not None else empty,
        readout_steered=readout_along(handle, steered, plan.readout) if plan.readout is not None else empty,
        schedule=np.asarray(plan.schedule, dtype=np.float64), split_sizes=dict(split_sizes or {}),
        classes=list(scale.classes) if scale is not None else [],
        class_readouts=[float(m) for m in scale.means] if scale is not None else [],
        steered_loop=repeated_ngram(steered_tokens), unsteered_loop=repeated_ngram(plain_tokens),
    )
