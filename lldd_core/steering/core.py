"""Steered generation beside the unsteered one, with the concept readout along the generated tokens.

Methods (each builds interventions of :mod:`lldd_core.forward.interventions`; generation is the model's own
``generate`` with its KV cache, left-padded batches):

1. ``additive``: ``α v_l`` added at the chosen layer(s), at the last position or every position.
2. ``llv``: the LLV minimum-energy schedule for ``Δy`` (:mod:`lldd_core.analysis.control`), ``u_l v_l`` at
   every layer, at the last position of every forward.
3. ``jacobian``: the detached-Jacobian steering operator of a steering phrase at layer ``ℓ``
   (``blend``: the paper's ``λ`` blend; ``additive``: the reference implementation's norm-matched
   addition).
4. ``lqr``: LQR feedback with the operating prompts' mean Jacobians (:mod:`lldd_core.linalg.lqr`), at
   every layer and every generated token.

The readout of a text is ``v_L^T x_L`` (before the final norm) **as the unsteered model reads it**,
at each generated token: the steered and the unsteered continuations are measured by the same
instrument, and a method cannot raise the readout merely by writing into the states it is read from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import ranges as R
from ..analysis.control import population_gains, schedules
from ..analysis.gains import GainsSetup
from ..errors import InputError
from ..forward.depth import last_token_actions, pad_batch
from ..forward.hooks import hooks, run_until, stop_after
from ..forward.interventions import (
    JACOBIAN_VARIANTS,
    POSITIONS,
    AddVectors,
    Intervention,
    JacobianSteering,
    LQRFeedback,
    intervene,
)
from ..forward.jacobian import jacobian_operator
from ..linalg.lqr import riccati_gains, setpoints
from ..models.loading import ModelHandle
from ..models.placement import model_dtype
from ..progress import ProgressFn
from ..store.results import result_type

METHODS = ("additive", "llv", "jacobian", "lqr")
METHOD_LINES = {
    "additive": "Adds α·v_l (the concept's class-mean direction) to the residual stream at the chosen layer(s).",
    "llv": "Adds u_l·v_l at every layer, the least-energy schedule the LLV surrogate predicts will move the "
           "readout by Δy.",
    "jacobian": "Maps the new text's inputs through the steering phrase's detached Jacobian and blends "
                "(or norm-matched adds) the result into the stream at one layer.",
    "lqr": "Feedback control: at every layer, measures the state's distance to the concept setpoint and "
           "adds the LQR-optimal correction K_k e_k.",
}


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: greedy (default) or sampling with a seed."""

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> GenerationSettings:
        """``self`` with every setting in its :mod:`~lldd_core.ranges` range (also the sampling ones when
        greedy: they enter the cache key), else :class:`InputError`."""
        R.MAX_NEW.check(self.max_new_tokens)
        R.TEMPERATURE.check(self.temperature)
        R.TOP_P.check(self.top_p)
        R.SEED.check(self.seed)
        if not isinstance(self.do_sample, bool):
            raise InputError(f"Sampling is on or off (True or False); got {self.do_sample!r}.")
        return self

    def generate_kwargs(self) -> dict:
        if self.do_sample:
            return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": 0}
        return {"do_sample": False}


@dataclass
class Generated:
    prompt_ids: list[int]
    new_ids: list[int]


def check_context(n_prompt: int, max_new_tokens: int, limit: int | None, model: str) -> None:
    """Refuse a generation whose prompt plus new tokens would run past the model's ``limit`` positions."""
    if limit is None or n_prompt + max_new_tokens <= limit:
        return
    if n_prompt >= limit:
        raise InputError(f"The prompt has {n_prompt} tokens, which leaves no room for new tokens in the {limit} "
                         f"positions of {model}: shorten the prompt.")
    raise InputError(f"The prompt has {n_prompt} tokens and {max_new_tokens} new tokens were asked for, but {model} "
                     f"handles at most {limit} positions: ask for at most {limit - n_prompt} new tokens, or shorten "
                     "the prompt.")


def generate(
    handle: ModelHandle,
    prompts: Sequence[Sequence[int]],
    interventions: Sequence[Intervention] = (),
    settings: GenerationSettings = GenerationSettings(),
    streamer: object | None = None,
) -> list[Generated]:
    """Generate continuations of a left-padded batch of prompts with ``interventions`` applied throughout.

    Sampling draws from a forked RNG seeded with ``settings.seed``, so runs are reproducible and
    the caller's RNG state is untouched. A prompt plus ``settings.max_new_tokens`` past the model's
    positions is refused up front (:func:`check_context`).
    """
    settings.check()
    if not prompts:
        raise InputError("Give at least one prompt to continue.")
    check_context(max(len(p) for p in prompts), settings.max_new_tokens, handle.info.max_positions, handle.spec.model)
    model = handle.model
    device = handle.device
    tok = handle.info.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids, mask = pad_batch(prompts, pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), \
            intervene(model, handle.adapter, interventions, attention_mask=mask):
        torch.manual_seed(settings.seed)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                             pad_token_id=pad, streamer=streamer, **settings.generate_kwargs())
    results = []
    for b, prompt in enumerate(prompts):
        new = out[b, ids.shape[1]:].tolist()
        eos = tok.eos_token_id
        if eos is not None and eos in new:  # finished rows are padded after their EOS
            new = new[: new.index(eos) + 1]
        results.append(Generated(list(prompt), new))
    return results


def readout_along(handle: ModelHandle, generated: Generated, readout: torch.Tensor) -> np.ndarray:
    """``w^T x_L`` at each generated token as the unsteered model reads prompt + continuation."""
    if not generated.new_ids:
        return np.zeros(0)
    model, blocks = handle.model, handle.adapter.layers(handle.model)
    L = len(blocks)
    device = handle.device
    ids = torch.tensor([generated.prompt_ids + generated.new_ids], device=device)
    out: dict = {}
    with torch.no_grad(), hooks(stop_after(blocks[L - 1], out, "xL")):
        run_until(model, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    xL = out["xL"][0, len(generated.prompt_ids):]
    return (xL @ readout.to(xL)).double().cpu().numpy()


# --- the methods' interventions ------------------------------------------------------------------


def llv_schedule(directions: torch.Tensor, u: np.ndarray) -> AddVectors:
    """``u_l v_l`` at every layer with a non-zero ``u_l``, at the last position."""
    return AddVectors({l: float(u[l]) * directions[l] for l in range(len(u)) if u[l] != 0}, "last")


def mean_jacobians(handle: ModelHandle, prompts: Sequence[Sequence[int]], *, pad_id: int = 0,
                   chunk: int = 64, progress: ProgressFn | None = None) -> torch.Tensor:
    """``A_k`` ``[L, d, d]``: last-token block Jacobians with the context frozen, averaged over ``prompts``."""
    L, d = handle.n_layers, handle.info.d_model
    dtype, device = model_dtype(handle.model), handle.device
    eye = torch.eye(d, dtype=dtype, device=device)
    A = torch.empty(L, d, d, dtype=dtype, device=device)
    for k in range(L):
        for start in range(0, d, chunk):
            cols = last_token_actions(handle.model, handle.adapter, prompts, k, eye[:, start:start + chunk], pad_id=pad_id)
            A[k, :, start:start + chunk] = cols.mean(0)
        if progress is not None:
            progress((k + 1) / L, f"Mean Jacobian of block {k + 1}/{L}")
    return A


def lqr_feedback(A: torch.Tensor, differences: torch.Tensor, lam: float, q: float, r: float, qf: float) -> LQRFeedback:
    """LQR feedback for setpoints ``β_k = λ ||E_k||`` along ``v_k = E_k / ||E_k||`` (``k = 0..L-1``)."""
    L = A.shape[0]
    v, beta = setpoints(differences[:L].double(), lam)
    K = riccati_gains(A.double().cpu(), q, r, qf)
    Kv = torch.einsum("kij,kj->ki", K, v.cpu())
    return LQRFeedback(v.to(A), beta.to(A), Kv.to(A))


# --- the whole comparison ------------------------------------------------------------------------


@result_type
class SteeringResult:
    model: str
    revision: str
    dtype: str
    family: str
    prompt: str
    method: str
    params: dict
    settings: dict
    dataset: str
    unsteered: str
    steered: str
    unsteered_tokens: list
    steered_tokens: list
    elapsed_s: float
    readout_unsteered: np.ndarray  # [n_unsteered]
    readout_steered: np.ndarray  # [n_steered]
    schedule: np.ndarray  # [L] per-layer amplitudes applied (additive / llv; empty otherwise)

    def summary(self) -> dict:
        keys = ("model", "revision", "dtype", "family", "prompt", "method", "params", "settings", "dataset",
                "unsteered", "steered", "unsteered_tokens", "steered_tokens", "elapsed_s")
        return {**{k: getattr(self, k) for k in keys}, "readout_unsteered": self.readout_unsteered.tolist(),
                "readout_steered": self.readout_steered.tolist(), "schedule": self.schedule.tolist()}


@dataclass
class SteeringPlan:
    """Everything one method needs, prepared once (directions, gains, Jacobians) and reused across prompts."""

    method: str
    interventions: list[Intervention]
    readout: torch.Tensor | None
    schedule: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: dict = field(default_factory=dict)


def default_layer(n_layers: int) -> int:
    """Two thirds of the depth (the papers' choice): ``x_l`` with ``l = round(2L/3)`` (at most ``L - 1``)."""
    return max(0, min(n_layers - 1, round(2 * n_layers / 3)))


#: The reference implementation's default strength of its norm-matched addition (``lambda_w``).
REFERENCE_LAMBDA = 1.028045295795
#: λ when none is given, per Jacobian variant (λ = 1 / 0 / 0 would leave the text unsteered).
DEFAULT_LAMBDA = {"blend": 0.5, "additive": 0.5, "reference": REFERENCE_LAMBDA}


def default_jacobian_layer(n_layers: int, variant: str = "blend") -> int:
    """The Jacobian operator's default ``x_layer`` (``1..L``): two thirds of the depth, ``2L//3`` for
    ``reference`` (the reference's ``lsplit``: its Jacobian maps to ``norm(x_lsplit)``, its vector is
    added at ``x_{lsplit-1}``)."""
    if variant == "reference":
        return max(1, 2 * n_layers // 3)
    return max(1, default_layer(n_layers))


def check_steering(
    method: str,
    n_layers: int,
    d: int,
    *,
    layers: Sequence[int] | None = None,
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
) -> dict:
    """Every steering setting checked against its :mod:`~lldd_core.ranges` range (the ones that depend on
    the method, such as λ's and the layers', for ``method``); the normalized keyword arguments.

    A setting the method does not read is still refused when it is nonsense (a NaN strength with the
    LLV method is a typo worth a message, not something to ignore in silence).
    """
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    if variant not in JACOBIAN_VARIANTS:
        raise InputError(f"Unknown Jacobian variant {variant!r}: choose one of {', '.join(JACOBIAN_VARIANTS)}.")
    if positions not in POSITIONS:
        raise InputError(f"Positions must be one of {', '.join(POSITIONS)}; got {positions!r}.")
    if layers is not None:
        rng = {"additive": R.STEER_LAYER, "jacobian": R.JACOBIAN_LAYER}.get(method, R.STEER_LAYERS)
        layers = sorted(set(R.check_list(list(layers) if not isinstance(layers, str) else layers, rng, hi=n_layers,
                                         max_len=n_layers + 1)))
        if method == "jacobian" and len(layers) != 1:
            raise InputError(f"The Jacobian method steers at one layer; got {layers}.")
    if method == "jacobian" and not str(steer_text).strip():
        raise InputError("The Jacobian method needs a steering phrase (e.g. 'The Golden Gate').")
    lam_rng = R.lam_range(method, variant) if method in ("jacobian", "lqr") else R.LAM
    return {"layers": layers, "strength": R.STRENGTH.check_optional(strength), "positions": positions,
            "dy": R.DY.check(dy), "order": R.ORDER.check(order, hi=d if method == "llv" else None),
            "steer_text": str(steer_text), "lam": lam_rng.check_optional(lam), "variant": variant,
            "q": R.Q.check(q), "r": R.R.check(r), "qf": R.QF.check(qf)}


def plan_steering(
    handle: ModelHandle,
    method: str,
    *,
    setup: GainsSetup | None = None,
    layers: Sequence[int] | None = None,
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
    A: torch.Tensor | None = None,
    J: SteeringJacobian | None = None,
    seed: int = 0,
) -> SteeringPlan:
    """Build one method's interventions (module doc). ``setup`` (a concept dataset) is needed except for ``jacobian``.

    ``A`` (LQR's mean Jacobians) and ``J`` (the steering phrase's Jacobians, with the final norm for
    the ``reference`` variant) may come from a cache.
    Every setting is checked first (:func:`check_steering`).
    """
    checked = check_steering(method, handle.n_layers, handle.info.d_model, layers=layers, strength=strength,
                             positions=positions, dy=dy, order=order, steer_text=steer_text, lam=lam, variant=variant,
                             q=q, r=r, qf=qf)
    layers, strength, dy, order, lam = (checked[k] for k in ("layers", "strength", "dy", "order", "lam"))
    q, r, qf = checked["q"], checked["r"], checked["qf"]
    R.SEED.check(seed)
    L = handle.n_layers
    readout = setup.directions[L] if setup is not None else None
    if method != "jacobian" and setup is None:
        raise InputError(f"The {method} method needs a concept dataset.")
    if method == "additive":
        layers = [default_layer(L)] if layers is None else layers
        if 0 in layers and 0 not in setup.layers:  # the dataset's texts give no direction at x_0
            raise InputError(f"Layers must lie in {min(setup.layers)}..{L - 1} for this model and dataset; got {layers}.")
        # default strength: one class-mean distance ||E_l|| at each layer (the concept's own scale)
        amounts = {l: float(setup.differences[l].norm()) if strength is None else float(strength) for l in layers}
        sched = np.zeros(L)
        for l, a in amounts.items():
            sched[l] = a
        vectors = AddVectors({l: a * setup.directions[l] for l, a in amounts.items()}, positions)
        return SteeringPlan(method, [vectors], readout, sched,
                            {"layers": layers, "strength": [amounts[l] for l in layers], "positions": positions})
    if method == "llv":
        h = population_gains(setup, order, "krylov", seed)
        u = schedules(h, setup.layers, L, dy, seed)["llv"]
        return SteeringPlan(method, [llv_schedule(setup.directions, u)], readout, u, {"dy": float(dy), "order": order})
    if method == "jacobian":
        layer = default_jacobian_layer(L, variant) if layers is None else layers[0]
        lam = DEFAULT_LAMBDA[variant] if lam is None else lam
        reference = variant == "reference"
        if J is None:
            J = analyze_steering_jacobian(handle, steer_text, layer, final_norm=reference)
        if J.layer != layer or J.final_norm != reference:
            raise ValueError(f"the steering Jacobian is of x_{J.layer} (final norm {J.final_norm}); "
                             f"{variant} at layer {layer} needs final norm {reference}")
        op = JacobianSteering(torch.as_tensor(J.J), layer, lam, variant,
                              b=None if reference else torch.as_tensor(J.b))
        return SteeringPlan(method, [op], readout, np.zeros(0),
                            {"steer_text": steer_text, "layer": layer, "lam": lam, "variant": variant})
    # lqr
    if A is None:
        raise InputError("LQR needs the operating prompts' mean Jacobians.")
    lam = 1.0 if lam is None else lam
    fb = lqr_feedback(A, setup.differences, lam, q, r, qf)
    return SteeringPlan(method, [fb], readout, np.zeros(0), {"lam": lam, "q": q, "r": r, "qf": qf})


def compare(
    handle: ModelHandle,
    prompt: str,
    plan: SteeringPlan,
    settings: GenerationSettings = GenerationSettings(),
    *,
    dataset: str = "",
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
        schedule=np.asarray(plan.schedule, dtype=np.float64),
    )


# --- cached pieces and streaming -----------------------------------------------------------------


@result_type
class SteeringJacobian:
    """A steering phrase's detached Jacobians ``J_i`` at ``x_layer`` (last token), with their reconstruction check."""

    model: str
    revision: str
    dtype: str
    family: str
    tokens: list
    input_ids: list
    layer: int
    final_norm: bool  # J maps to norm(x_layer) (the reference variant) instead of x_layer
    reconstruction_error: float  # ||y - Σ_i J_i x_{0,i} - b|| / ||y||, y = x_layer or norm(x_layer)
    J: np.ndarray  # [T_s, d, d]
    b: np.ndarray  # [d] the bias channel (zero for bias-free families)


def analyze_steering_jacobian(handle: ModelHandle, steer_text: str, layer: int,
                              final_norm: bool = False) -> SteeringJacobian:
    """The detached Jacobian and bias channel of ``steer_text`` at ``x_layer`` (or ``norm(x_layer)``),
    checked by reconstruction."""
    from ..forward.jacobian import reconstruct, relative_error

    if not steer_text.strip():
        raise InputError("The Jacobian method needs a steering phrase (e.g. 'The Golden Gate').")
    layer = R.JACOBIAN_LAYER.check(layer, hi=handle.n_layers)
    ids = handle.info.encode(steer_text)
    op = jacobian_operator(handle.model, handle.adapter, torch.tensor(ids), layer=layer, final_norm=final_norm)
    full = op.full()
    err = relative_error(op.y, reconstruct(full.J, op.x0, full.b))
    return SteeringJacobian(**handle.result_fields(ids), layer=int(layer), final_norm=bool(final_norm),
                            reconstruction_error=err, J=full.J.detach().cpu().numpy(), b=full.b.detach().cpu().numpy())


@result_type
class MeanJacobians:
    """The operating prompts' mean last-token block Jacobians ``A_k`` (LQR's dynamics)."""

    model: str
    revision: str
    dtype: str
    family: str
    dataset: str
    n_prompts: int
    max_tokens: int
    A: np.ndarray  # [L, d, d]


def analyze_mean_jacobians(handle: ModelHandle, setup: GainsSetup, *, n_prompts: int = 50, max_tokens: int = 24,
                           progress: ProgressFn | None = None) -> MeanJacobians:
    """``A_k`` averaged over up to ``n_prompts`` operating prompts cut to their last ``max_tokens`` tokens.

    (The LQR reference averages over 50 prompts with the context cut to 24 tokens.)
    """
    prompts = [ids[-max_tokens:] for ids in setup.operating[:n_prompts]]
    A = mean_jacobians(handle, prompts, pad_id=setup.pad, progress=progress)
    return MeanJacobians(**handle.result_fields(), dataset=setup.data.name, n_prompts=len(prompts),
                         max_tokens=int(max_tokens), A=A.detach().cpu().numpy())


class CallbackStreamer:
    """A ``generate`` streamer (``put``/``end``) that calls ``on_text(text so far)`` after every token (batch 1)."""

    def __init__(self, tokenizer: object, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        self.on_text(self.tokenizer.decode(self.ids))

    def end(self) -> None:
        self.on_text(self.tokenizer.decode(self.ids))
