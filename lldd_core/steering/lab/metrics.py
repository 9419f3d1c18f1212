"""What one continuation achieves and costs, each measured by the **unsteered** model (the same instrument for
every cell, so a method cannot improve its scores by writing into the states they are read from).

For a prompt ``p`` (ids ``p_1..p_n``) and its continuation ``c_1..c_T``, one forward pass of ``p + c`` gives:

* ``perplexity = exp(−(1/T) Σ_t log P(c_t | p, c_<t))`` (fluency; also under another LM, :func:`lm_perplexity`);
* ``readout = (1/T) Σ_t v_Lᵀ x_L(c_t)``, the mean concept readout along the continuation (its shift against
  the unsteered continuation is the cell's readout shift);
* ``state = x_L`` at the last token before any end-of-text token (the probe was fitted on texts' last real
  tokens), which the concept probe classifies.

``repetition = 1 − distinct-2``: the share of the continuation's token bigrams that repeat an earlier one. Side
effects are :func:`next_token_kl` on neutral prompts: ``KL(P₀ ‖ P_s)`` of the next-token distributions unsteered
(``P₀``) and steered (``P_s``) at each prompt's last position, averaged. Each text is scored alone, so a score
depends on the text only, never on which other texts shared a batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...forward.depth import pad_batch
from ...forward.hooks import capture, hooks
from ...forward.interventions import Intervention, intervene
from ...models.loading import ModelHandle


@dataclass(frozen=True)
class TextScore:
    """One continuation's measures (module doc); ``state`` ``[d]`` float64."""

    perplexity: float
    readout: float
    state: np.ndarray
    repetition: float


def distinct_repetition(ids: Sequence[int], n: int = 2) -> float:
    """``1 − distinct-n``: the share of the ``n``-grams of ``ids`` that repeat an earlier one (0 with none)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def score_text(handle: ModelHandle, prompt_ids: list[int], new_ids: list[int], readout: torch.Tensor) -> TextScore:
    """Perplexity, mean readout and final ``x_L`` of ``prompt + continuation`` (one unsteered forward)."""
    model, blocks = handle.model, handle.adapter.layers(handle.model)
    ids = torch.tensor([list(prompt_ids) + list(new_ids)], device=handle.device)
    seen: dict = {}
    with torch.no_grad(), hooks(capture(blocks[-1], seen, "xL", select=lambda h: h.detach())):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    xL = seen["xL"][0].double()
    n, T = len(prompt_ids), len(new_ids)
    eos = handle.info.tokenizer.eos_token_id
    last = n + T - 1 - (1 if T and new_ids[-1] == eos else 0)
    state = xL[last].cpu().numpy()
    if T == 0:
        return TextScore(float("nan"), float("nan"), state, 0.0)
    logp = torch.log_softmax(logits[n - 1:n - 1 + T].double(), dim=-1)
    nll = -logp.gather(1, ids[0, n:n + T, None].to(logp.device))[:, 0].mean()
    along = xL[n:] @ readout.to(xL)
    return TextScore(float(torch.exp(nll)), float(along.mean()), state, distinct_repetition(list(new_ids)))


def lm_perplexity(handle: ModelHandle, prompt: str, continuation: str) -> float:
    """Perplexity of ``continuation`` after ``prompt`` under another causal LM (its own tokenizer)."""
    info = handle.info
    p_ids = info.encode(prompt)
    full = info.encode(prompt + continuation)
    new = full[len(p_ids):] if full[:len(p_ids)] == p_ids else info.encode(continuation)
    if not new or not p_ids:
        return float("nan")
    ids = torch.tensor([p_ids + new], device=handle.device)
    with torch.no_grad():
        logits = handle.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    logp = torch.log_softmax(logits[len(p_ids) - 1:-1].double(), dim=-1)
    return float(math.exp(-float(logp.gather(1, ids[0, len(p_ids):, None])[:, 0].mean())))


def next_token_logprobs(handle: ModelHandle, prompts: Sequence[list[int]],
                        interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """``[N, V]`` float64 log-probabilities of the next token after each of ``prompts`` (one left-padded batch),
    with ``interventions`` applied (copied first: a stateful one starts fresh)."""
    tok = handle.info.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids, mask = pad_batch(prompts, pad, "left")
    ids, mask = ids.to(handle.device), mask.to(handle.device)
    fresh = [copy.copy(item) for item in interventions]
    with torch.no_grad(), intervene(handle.model, handle.adapter, fresh, attention_mask=mask):
        logits = handle.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
    return torch.log_softmax(logits.double(), dim=-1).cpu()


def next_token_kl(base: torch.Tensor, steered: torch.Tensor) -> float:
    """Mean over prompts of ``KL(P₀ ‖ P_s) = Σ_v P₀(v) (log P₀(v) − log P_s(v))`` (log-probabilities in)."""
    return float((base.exp() * (base - steered)).sum(-1).mean())
