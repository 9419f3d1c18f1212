"""Decoding vectors of the residual stream to tokens.

* Output space (left singular vectors ``u``, rows of ``J``): by their logits ``W_U u``, where
  ``W_U`` is the unembedding matrix (``[V, d]``, bias not applied: a direction has no offset).
  Gemma's final logit soft-capping is monotone per logit and is not applied; it would not change
  the order.
* Input space (right singular vectors ``v``, columns of ``J``): by cosine similarity to the rows of
  the input embedding matrix ``W_E`` (``[V, d]``).

Both return the top tokens in descending score, batched over leading dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Decoded:
    """Top tokens of each decoded vector: ``ids`` and ``scores`` have shape ``[..., top]``."""

    ids: torch.Tensor
    scores: torch.Tensor

    def strings(self, tokenizer: PreTrainedTokenizerBase) -> list:
        """Token strings with the same nesting as ``ids``."""
        flat = [tokenizer.decode([int(i)]) for i in self.ids.reshape(-1)]
        shape = list(self.ids.shape)
        out: list = flat
        for size in reversed(shape[1:]):
            out = [out[i : i + size] for i in range(0, len(out), size)]
        return out


def decode_output(vectors: torch.Tensor, unembedding: torch.Tensor, top: int = 8) -> Decoded:
    """Top tokens of ``W_U v`` for each vector ``v`` (``vectors``: ``[..., d]``)."""
    W = unembedding.to(device=vectors.device, dtype=vectors.dtype)
    scores, ids = torch.topk(vectors @ W.T, k=min(top, W.shape[0]), dim=-1)
    return Decoded(ids=ids, scores=scores)


def decode_input(vectors: torch.Tensor, embedding: torch.Tensor, top: int = 8) -> Decoded:
    """Top tokens by cosine similarity of each vector with the input embedding rows."""
    W = embedding.to(device=vectors.device, dtype=vectors.dtype)
    rows = W / W.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)
    v = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    scores, ids = torch.topk(v @ rows.T, k=min(top, W.shape[0]), dim=-1)
    return Decoded(ids=ids, scores=scores)
