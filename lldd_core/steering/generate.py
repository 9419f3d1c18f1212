"""Generation with interventions applied throughout, the concept readout along a text, live streaming.

Generation is the model's own ``generate`` with its KV cache, on left-padded batches; the
interventions (:mod:`lldd_core.forward.interventions`) stay registered for the whole generation and are
always removed. The readout of a text is ``w^T x_L`` (before the final norm) **as the unsteered model
reads it**, at each generated token, so steered and unsteered continuations are measured by the same
instrument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import ranges as R
from ..errors import InputError
from ..forward.depth import pad_batch
from ..forward.hooks import hooks, run_until, stop_after
from ..forward.interventions import Intervention, intervene
from ..models.loading import ModelHandle


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
        """The decoding keyword arguments of ``model.generate`` (``top_k = 0``: top-p alone truncates)."""
        if self.do_sample:
            return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": 0}
        return {"do_sample": False}


#: Greedy decoding of 40 new tokens (the default of every generation).
DEFAULT_SETTINGS = GenerationSettings()


@dataclass
class Generated:
    """One continuation: the prompt's token ids and the new ones (cut after the first EOS)."""

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
    settings: GenerationSettings = DEFAULT_SETTINGS,
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
