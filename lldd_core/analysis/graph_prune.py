"""Influence, pruning and the replacement score of an attribution graph (circuit-tracer's algorithm).

Influence: with ``Â`` the adjacency with absolute weights, each target row normalized to sum 1,
and ``w`` the target logits' weights (their probabilities, normalized), a node's influence is its
entry of ``w^T (Â + Â^2 + ...) = w^T ((I - Â)^{-1} - I)``: the share of the targets' absolute
attribution that flows through it along all paths. The graph is a DAG, so the series ends.

Pruning: neurons are kept, most influential first, until they cover ``node_threshold`` of the
neurons' total influence (embeddings, biases and logits always stay); then, on that subgraph, an
edge's score is ``Â[t, s] * (influence(t) + w(t))`` and edges are kept, highest first, until they
cover ``edge_threshold`` of the total score; neurons left without an outgoing edge are dropped.

Replacement score (lldd's definition, exact graphs have no error nodes): the pruned graph is
re-evaluated as a linear circuit. Embeddings and biases keep their values; a kept, visited neuron's
value becomes ``v' = sum over its kept incoming edges of w_e * r(source)`` with ``r = v'/v`` (1 for
embeddings, biases and unvisited neurons; 0 where ``v = 0``), in layer order; each target's kept
logit is ``L'_t = sum over its kept incoming edges of w_e * r(source)``. Then
``replacement_score = sum_t p_t L'_t / sum_t p_t L_t`` with the target weights ``p``: 1 for the
unpruned graph (completeness), and the share of the (weighted) target logit the pruned graph keeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .graph_result import KIND_LOGIT, KIND_NEURON, GraphResult

#: Elements of ``A`` touched per step of the column-chunked passes (bounds the temporary ``|A|`` slices).
_CHUNK_ELEMENTS = 1 << 24


def _column_chunks(A: torch.Tensor) -> range:
    step = max(1, _CHUNK_ELEMENTS // max(1, A.shape[0]))
    return range(0, A.shape[1], step)


def influence(A: torch.Tensor, row_ids: list[int], neuron0: int, weights: torch.Tensor, *,
              rowsum: torch.Tensor | None = None, first_column: int = 0) -> torch.Tensor:
    """Influence on the targets of the source columns ``first_column..`` of the row block ``A`` ``[rows, sources]``.

    ``row_ids[k]``: ``-1 - j`` for target logit ``j`` (weight ``weights[j]``), else the flat neuron
    index of the row (its column is ``neuron0 + index``).

    With ``Â = |A| / rowsum`` and ``r_0`` the targets' weights on their rows, ``r_{k+1}`` is ``r_k Â``
    restricted to the visited neurons' columns (a ``[rows, rows]`` block ``S``), and the influence is
    ``(sum_k r_k) Â``: the series runs on ``S`` and the full ``A`` is read twice (row sums, the final
    product), in column chunks, never copied whole. ``rowsum``: the rows' ``sum |A|`` when the caller
    keeps them (then ``A`` is read once).
    """
    ids = torch.tensor(row_ids, device=A.device)
    is_neuron = ids >= 0
    if rowsum is None:
        rowsum = torch.linalg.vector_norm(A, ord=1, dim=1)  # sum |A| without an |A| temporary
    scale = 1.0 / rowsum.clamp_min(torch.finfo(A.dtype).tiny)
    S = A[:, neuron0 + ids[is_neuron]].abs() * scale[:, None]  # [rows, visited neurons]
    r = torch.zeros(len(row_ids), dtype=A.dtype, device=A.device)
    r[~is_neuron] = weights.to(A.dtype).to(A.device)[-1 - ids[~is_neuron]]
    total_r = torch.zeros_like(r)
    for _ in range(len(row_ids) + 1):  # a DAG: the series ends after its depth
        total_r += r
        nxt = torch.zeros_like(r)
        nxt[is_neuron] = r @ S
        if not bool(nxt.any()):
            break
        r = nxt
    weighted = total_r * scale
    total = torch.empty(A.shape[1] - first_column, dtype=A.dtype, device=A.device)
    chunks = _column_chunks(A)
    for c in range(0, len(total), chunks.step):
        total[c: c + chunks.step] = weighted @ A[:, first_column + c: first_column + c + chunks.step].abs()
    return total


def _rows(graph: GraphResult, keep_edge: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense visited-row block of the kept edges: ``(A [rows, N], row node numbers, row of each node or -1)``."""
    row_nodes = np.nonzero(graph.node_visited)[0]
    row_of = np.full(len(graph.node_kind), -1)
    row_of[row_nodes] = np.arange(len(row_nodes))
    A = np.zeros((len(row_nodes), len(graph.node_kind)))
    s, t, w = graph.edge_source[keep_edge], graph.edge_target[keep_edge], graph.edge_weight[keep_edge]
    np.add.at(A, (row_of[t], s), w)
    return A, row_nodes, row_of


def node_influence(graph: GraphResult, keep_edge: np.ndarray | None = None) -> np.ndarray:
    """Every node's influence on the targets (over the kept edges)."""
    keep_edge = np.ones(graph.edge_weight.size, bool) if keep_edge is None else keep_edge
    A, row_nodes, _ = _rows(graph, keep_edge)
    logits = np.nonzero(graph.node_kind == KIND_LOGIT)[0]
    probs = np.asarray(graph.target_probs) / np.sum(graph.target_probs)
    # re-express rows as the ids influence() expects: node numbers act as "neuron" columns (neuron0 = 0)
    row_ids = [-1 - int(np.nonzero(logits == n)[0][0]) if graph.node_kind[n] == KIND_LOGIT else int(n)
               for n in row_nodes]
    return influence(torch.from_numpy(A), row_ids, 0, torch.from_numpy(probs)).numpy()


def _cover(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the smallest highest-first set whose sum reaches ``threshold`` of the total (ties by order)."""
    mask = np.zeros(scores.size, bool)
    total = scores.sum()
    if threshold >= 1:  # everything that matters at all (a cumulative sum would lose the rounding tail)
        return scores > 0
    if total <= 0:
        return mask
    order = np.argsort(-scores, kind="stable")
    cum = np.cumsum(scores[order])
    n = int(np.searchsorted(cum, threshold * total * (1 - 1e-12))) + 1
    mask[order[: min(n, scores.size)]] = True
    return mask & (scores > 0)


def kept_logits(graph: GraphResult, keep_edge: np.ndarray) -> np.ndarray:
    """Each target's logit re-evaluated on the kept edges (see the module docstring)."""
    ratio = np.ones(len(graph.node_kind))
    value = graph.node_activation
    src, tgt, w = graph.edge_source[keep_edge], graph.edge_target[keep_edge], graph.edge_weight[keep_edge]
    recomputed = graph.node_visited & ((graph.node_kind == KIND_NEURON) | (graph.node_kind == KIND_LOGIT))
    for layer in range(graph.n_layers + 1):
        at = recomputed & (graph.node_layer == layer)
        sel = at[tgt]
        # (float even when no edge is selected: bincount of nothing is int64)
        new = np.bincount(tgt[sel], weights=w[sel] * ratio[src[sel]], minlength=len(ratio)).astype(np.float64)
        ratio = np.where(at, np.divide(new, value, out=np.zeros_like(new), where=value != 0), ratio)
        if layer == graph.n_layers:
            out = new
    logits = np.nonzero(graph.node_kind == KIND_LOGIT)[0]
    return out[logits]


def replacement_score(graph: GraphResult, keep_edge: np.ndarray) -> tuple[float, np.ndarray]:
    """``sum_t p_t L'_t / sum_t p_t L_t`` and the kept logits ``L'``."""
    kept = kept_logits(graph, keep_edge)
    full = graph.node_activation[graph.node_kind == KIND_LOGIT]
    p = np.asarray(graph.target_probs)
    return float(p @ kept / (p @ full)), kept


def prune(graph: GraphResult, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> GraphResult:
    """The pruned graph (nodes renumbered), with influence, coverage and the replacement score filled in."""
    if not (0 < node_threshold <= 1 and 0 < edge_threshold <= 1):
        raise ValueError("thresholds must be in (0, 1]")
    infl = node_influence(graph)
    neuron = graph.node_kind == KIND_NEURON
    keep_node = ~neuron
    keep_node[neuron] = _cover(infl[neuron], node_threshold)
    node_kept = float(infl[keep_node & neuron].sum() / max(infl[neuron].sum(), np.finfo(float).tiny))
    keep_edge = keep_node[graph.edge_source] & keep_node[graph.edge_target]
    A, _, row_of = _rows(graph, keep_edge)
    An = np.abs(A) / np.maximum(np.abs(A).sum(1, keepdims=True), np.finfo(float).tiny)
    infl2 = node_influence(graph, keep_edge)
    weight = np.zeros(len(graph.node_kind))
    weight[graph.node_kind == KIND_LOGIT] = np.asarray(graph.target_probs) / np.sum(graph.target_probs)
    t, s = graph.edge_target, graph.edge_source
    score = np.where(keep_edge, An[np.maximum(row_of[t], 0), s] * (infl2[t] + weight[t]), 0.0)
    edge_mask = _cover(score, edge_threshold)
    edge_kept = float(score[edge_mask].sum() / max(score.sum(), np.finfo(float).tiny))
    while True:  # drop neurons that no longer reach a target
        has_out = np.zeros(len(keep_node), bool)
        has_out[s[edge_mask]] = True
        drop = keep_node & neuron & ~has_out
        if not drop.any():
            break
        keep_node &= ~drop
        edge_mask &= keep_node[s] & keep_node[t]
    score_value, kept = replacement_score(graph, edge_mask)
    new_number = np.cumsum(keep_node) - 1
    return dataclasses.replace(
        graph,
        node_kind=graph.node_kind[keep_node], node_layer=graph.node_layer[keep_node],
        node_position=graph.node_position[keep_node], node_index=graph.node_index[keep_node],
        node_activation=graph.node_activation[keep_node], node_influence=infl[keep_node],
        node_visited=graph.node_visited[keep_node], node_rest=graph.node_rest[keep_node] if graph.node_rest.size
        else graph.node_rest, edge_source=new_number[s[edge_mask]],
        edge_target=new_number[t[edge_mask]], edge_weight=graph.edge_weight[edge_mask], pruned=True,
        node_threshold=node_threshold, edge_threshold=edge_threshold, replacement_score=score_value,
        kept_logits=[float(x) for x in kept], node_influence_kept=node_kept, edge_score_kept=edge_kept,
    )
