"""Decodings of attribution-graph neurons: what each neuron writes and what it reads, as tokens.

Neuron ``i`` of block ``l`` has the value ``h_i`` that enters the MLP's output projection ``W_down``.

* It **writes** ``w = r P W_down[:, i]`` into the residual stream per unit of ``h_i``, with ``P`` the
  linear part of a norm after the MLP where the family has one (Gemma, OLMo 2: ``(o + g) ⊙ ·``; its
  frozen scale is positive and left out) and ``r`` the family's residual multiplier (Granite; else 1).
  The *output decoding* is ``c W_U F w`` (``c``: the logit multiplier, Granite and Cohere), with ``F`` the final
  norm's linear part without its positive scale (``(o + g) ⊙ ·`` for RMSNorm, ``g ⊙ (· − mean ·)`` for
  LayerNorm): the neuron's direct effect on the logits per unit value, up to that scale. The ``+``
  tokens are the ones it raises, the ``−`` tokens the ones it lowers (no bias: a direction has no
  offset; Gemma's final soft-capping is monotone and not applied).
* It **reads** ``r = Nᵀ W_up[i]``: its row of the input projection (``up`` of a gated MLP, ``fc_in`` of
  a plain one) pulled back through the pre-MLP norm's linear part ``N`` (none for OLMo 2) — the
  residual direction that raises the neuron's pre-activation. Gated families also decode the gate
  row the same way (it decides how strongly the neuron passes ``up``). The *input decodings* are the
  cosine similarities with the input embedding rows, for ``+r`` and ``−r``.

Both depend on the weights only, not on the position, so each ``(layer, neuron)`` of a graph is decoded
once, all of them batched through :mod:`lldd_core.linalg.decoding`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..linalg.decoding import Decoded, decode_input, decode_output
from ..models.arch import FamilyAdapter, is_layer_norm, is_norm
from ..models.placement import tensor_of
from .graph_result import KIND_NEURON, GraphResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: The decodings of a neuron, in the order of ``GraphResult.decoded_ids[:, slot]``; the gate's only for gated MLPs.
OUTPUT_KINDS = ("out+", "out-")
INPUT_KINDS = ("in+", "in-")
GATE_KINDS = ("gate+", "gate-")
#: Vectors decoded per batch (bounds the ``[batch, vocabulary]`` score matrix).
CHUNK = 256


def matrix(module: nn.Module) -> torch.Tensor:
    """A projection's weight as ``[out, in]`` (``nn.Linear``'s layout; GPT-2's ``Conv1D`` stores ``[in, out]``)."""
    w = tensor_of(module).detach()
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{type(module).__name__} has no plain weight matrix (quantized?)")
    return w if isinstance(module, nn.Linear) else w.T


def _norm_gain(norm: nn.Module, adapter: FamilyAdapter, like: torch.Tensor) -> torch.Tensor:
    """The elementwise factor of a norm's linear part: ``o + g`` (RMSNorm), ``g`` (LayerNorm), ones without ``g``."""
    weight = norm._parameters.get("weight")
    if weight is None:
        return torch.ones(like.shape[-1], dtype=like.dtype, device=like.device)
    offset = 0.0 if is_layer_norm(norm) else adapter.norm_weight_offset
    return (offset + tensor_of(norm).detach()).to(like)


def norm_forward(norm: nn.Module | None, adapter: FamilyAdapter, v: torch.Tensor) -> torch.Tensor:
    """``N v``: the norm's linear part (frozen scale left out) applied to vectors ``v`` ``[..., d]``."""
    if norm is None:
        return v
    if is_layer_norm(norm):
        v = v - v.mean(-1, keepdim=True)
    return v * _norm_gain(norm, adapter, v)


def norm_pullback(norm: nn.Module | None, adapter: FamilyAdapter, r: torch.Tensor) -> torch.Tensor:
    """``Nᵀ r``: a functional read after the norm, as a functional of the norm's input (centering is symmetric)."""
    if norm is None:
        return r
    r = r * _norm_gain(norm, adapter, r)
    return r - r.mean(-1, keepdim=True) if is_layer_norm(norm) else r


def neuron_vectors(model: nn.Module, adapter: FamilyAdapter, layer: int,
                   index: torch.Tensor) -> dict[str, torch.Tensor]:
    """For neurons ``index`` of block ``layer``: ``write`` (``P W_down[:, i]``), ``read`` (``Nᵀ W_up[i]``) and,
    for gated MLPs, ``gate`` (``Nᵀ W_gate[i]``), each ``[k, d]`` in residual-stream coordinates."""
    block = adapter.layers(model)[layer]
    down = matrix(block.get_submodule(adapter.mlp_down))  # [d, m]
    index = index.to(down.device)
    post = adapter.sublayer(block, "mlp")
    write = norm_forward(post if is_norm(post) else None, adapter, down[:, index].T)
    r = adapter.residual_multiplier(model)  # Granite adds r * term to the stream
    write = write if r == 1.0 else write * r
    pre = adapter.mlp_norm_module(block)
    up = matrix(block.get_submodule(adapter.mlp_up))
    m = down.shape[1]
    rows = {"read": up[m + index] if adapter.mlp_gate_up_fused else up[index]}
    if adapter.mlp_gate is not None:
        gate = up if adapter.mlp_gate_up_fused else matrix(block.get_submodule(adapter.mlp_gate))
        rows["gate"] = gate[index]
    return {"write": write, **{k: norm_pullback(pre, adapter, v) for k, v in rows.items()}}


def _chunks(vectors: torch.Tensor) -> Iterator[torch.Tensor]:
    yield from (vectors[i: i + CHUNK] for i in range(0, vectors.shape[0], CHUNK))


def _decode(fn: Any, vectors: torch.Tensor, W: torch.Tensor, n: int) -> Decoded:
    """``fn`` (:func:`decode_output` / :func:`decode_input`) over chunks of ``vectors``, on ``W``'s device."""
    parts = [fn(c.to(W.device), W, n) for c in _chunks(vectors)]
    return Decoded(ids=torch.cat([p.ids for p in parts]), scores=torch.cat([p.scores for p in parts]))


def decoded_neurons(graph: GraphResult) -> np.ndarray:
    """The node numbers whose decodings a graph carries: a pruned graph's neurons, an unpruned graph's visited ones."""
    neuron = graph.node_kind == KIND_NEURON
    return np.nonzero(neuron & (graph.node_visited | graph.pruned))[0]


def decode_graph_neurons(model: nn.Module, adapter: FamilyAdapter, graph: GraphResult,
                         tokenizer: PreTrainedTokenizerBase, n: int = 5) -> dict[str, Any]:
    """The decoding fields of :class:`GraphResult` for :func:`decoded_neurons` (each ``(layer, neuron)`` once).

    Returns ``decode_kinds``, ``decoded_layer`` / ``decoded_index`` ``[D]``, ``decoded_ids`` /
    ``decoded_scores`` ``[D, S, n]`` (logit per unit value for ``out``, cosine for ``in`` / ``gate``) and
    ``decoded_tokens`` ``[D][S][n]``; empty when the weights are not plain matrices (quantized).
    """
    nodes = decoded_neurons(graph)
    pairs = np.unique(np.stack([graph.node_layer[nodes], graph.node_index[nodes]], 1), axis=0)
    kinds = (*OUTPUT_KINDS, *INPUT_KINDS, *(GATE_KINDS if adapter.mlp_gate is not None else ()))
    W_U = tensor_of(adapter.unembedding(model)).detach()
    W_E = tensor_of(adapter.input_embedding(model)).detach()
    final = adapter.final_norm(model)
    logit_scale = adapter.logit_multiplier(model)  # scores are logits (Granite, Cohere scale them)
    ids, scores = [], []
    try:
        with torch.no_grad():
            for layer in np.unique(pairs[:, 0]) if pairs.size else []:
                index = torch.from_numpy(pairs[pairs[:, 0] == layer, 1])
                vec = neuron_vectors(model, adapter, int(layer), index)
                logit_dir = norm_forward(final, adapter, vec["write"].to(W_U.device)) * logit_scale
                out = [_decode(decode_output, s * logit_dir, W_U, n) for s in (1, -1)]
                inp = [_decode(decode_input, s * vec[k], W_E, n) for k in ("read", "gate") if k in vec for s in (1, -1)]
                ids.append(torch.stack([d.ids.cpu() for d in (*out, *inp)], 1))
                scores.append(torch.stack([d.scores.double().cpu() for d in (*out, *inp)], 1))
    except ValueError:
        pairs, ids, scores = pairs[:0], [], []
    k = min(n, W_U.shape[0])
    all_ids = torch.cat(ids).numpy() if ids else np.zeros((0, len(kinds), k), np.int64)
    strings = Decoded(torch.from_numpy(all_ids), torch.zeros(0)).strings(tokenizer) if all_ids.size else []
    return {"decode_kinds": list(kinds), "decoded_layer": pairs[:, 0].astype(np.int64),
            "decoded_index": pairs[:, 1].astype(np.int64), "decoded_ids": all_ids.astype(np.int64),
            "decoded_scores": torch.cat(scores).numpy() if scores else np.zeros((0, len(kinds), k)),
            "decoded_tokens": strings}
