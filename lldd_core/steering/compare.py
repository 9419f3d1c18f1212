"""One prompt continued unsteered and steered by a plan, with the concept readout along both texts.

A :class:`SteeringPlan` is what a steering method (:mod:`lldd_core.steering.methods`) prepares once:
its interventions, the readout direction and the parameters it resolved. :func:`compare` runs it.
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
    #: per class: concept / operating / evaluation examples of the concept's splits as used (empty without one)
    split_sizes: dict = field(default_factory=dict)


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
) -> SteeringResult:
    """Generate ``prompt``'s continuation unsteered and steered by ``plan``; readouts along both.

    ``plain``: the unsteered continuation if already generated with these settings (it does not
    depend on the method, so comparing several methods generates it once).
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
    return SteeringResult(
        **handle.result_fields(), prompt=prompt, method=plan.method, params=plan.params,
        settings=settings.__dict__.copy(), dataset=dataset,
        unsteered=tok.decode(plain.new_ids), steered=tok.decode(steered.new_ids),
        unsteered_tokens=handle.info.token_strings(plain.new_ids), steered_tokens=handle.info.token_strings(steered.new_ids),
        elapsed_s=time.perf_counter() - t0,
        readout_unsteered=readout_along(handle, plain, plan.readout) if plan.readout is not None else empty,
        readout_steered=readout_along(handle, steered, plan.readout) if plan.readout is not None else empty,
        schedule=np.asarray(plan.schedule, dtype=np.float64), split_sizes=dict(split_sizes or {}),
    )
