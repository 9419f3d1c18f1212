"""Exact attribution graphs: direct linear effects between embeddings, MLP neurons, biases and logits.

In detached mode (:mod:`lldd_core.forward.linearize`) norm scales, attention weights and MLP gates are
constants, so the map from ``(x_0, neuron values, bias scales)`` to every later neuron value and
to the raw target logits is linear. Every neuron value ``h`` (the input of the MLP's output
projection) is captured by a pre-hook on that projection and *re-injected as a fresh leaf*, so a
gradient never flows through another neuron: the gradient of a target with respect to a source
leaf is the target's read-out at the source's write location, through the frozen residual stream
and attention OV paths only. The edge weight ``s -> t`` is ``value(s) * dt/ds`` and, by Euler's
theorem for linear maps, every neuron value and every target logit equals the sum of its incoming
edges exactly (no error nodes).

Nodes: one embedding node per position (value ``x_0`` there; its edge is ``g . x_0``), one bias
node per block whose modules own biases (``s_l = 1``, the bias channel of
:func:`lldd_core.models.placement.scaled_biases`) plus one for the final norm / unembedding, every MLP
neuron ``(layer, position, index)``, and the target logits (raw, before any soft-capping, at the
last position). Rows (:func:`graph_rows`) are filled by batched backward passes
(``is_grads_batched``), logits first, then neurons in order of their current influence on the
logits, up to ``max_nodes`` neurons; each batch of neuron targets is grouped by block and every
group's backward starts at its block (:mod:`lldd_core.analysis.graph_rows`), so a neuron's row
costs the blocks below it only. Unvisited neurons stay as sources (their outgoing edges are exact;
they have no incoming edges). :func:`assemble` turns the rows into the result: every nonzero entry
as an edge, or each row's largest ``edges_per_row`` with the rest summed per node (``node_rest``).
Pruning and the replacement score live in :mod:`lldd_core.analysis.graph_prune`, the neurons'
decodings in :mod:`lldd_core.analysis.graph_decode`, interventions in :mod:`lldd_core.analysis.graph_intervention`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NumericalError
from ..forward.hooks import hooks, replace_input
from ..forward.linearize import detached_mode
from ..forward.residual import run_to_layer
from ..models.arch import FamilyAdapter
from ..models.placement import input_device, model_dtype, scaled_biases
from .graph_decode import decode_graph_neurons
from .graph_prune import influence, prune, replacement_score
from .graph_result import KIND_BIAS, KIND_EMBEDDING, KIND_LOGIT, KIND_NEURON, GraphResult
from .graph_rows import GraphRows, RetainedForward, RowWriter, write_rows

if TYPE_CHECKING:
    from ..models.loading import ModelHandle, ModelInfo

ProgressFn = Callable[[float, str], None]


class _Capture:
    """Pre-hooks on every block's MLP output projection: record ``h`` and swap in a leaf copy."""

    def __init__(self, modules: Sequence[nn.Module], scale: list[torch.Tensor | None] | None = None,
                 inject: bool = True, given: Sequence[torch.Tensor] | None = None) -> None:
        # given: tensors to inject instead of fresh leaf copies (a brute-force check differentiates them)
        self.modules, self.scale, self.inject, self.given = modules, scale, inject, given
        self.live: list[torch.Tensor] = []
        self.leaves: list[torch.Tensor] = []

    def _swap(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Layer ``layer``'s input transform: scale ``h``, record it, hand on the leaf (or ``h``)."""

        def swap(h: torch.Tensor) -> torch.Tensor:
            if self.scale is not None and self.scale[layer] is not None:
                h = h * self.scale[layer].to(h.dtype)
            self.live.append(h)
            if not self.inject:
                return h
            leaf = h.detach().clone().requires_grad_(True) if self.given is None else self.given[layer]
            self.leaves.append(leaf)
            return leaf

        return swap

    @contextlib.contextmanager
    def active(self) -> Iterator[_Capture]:
        """The hooks installed for the block (removed on exit, also on error); yields this capture."""
        with hooks(*(replace_input(m, self._swap(i)) for i, m in enumerate(self.modules))):
            yield self


def check_graph_family(adapter: FamilyAdapter) -> None:
    """:class:`InputError` for a mixture-of-experts family: a graph node is one neuron of a block's single MLP,
    while an MoE block's neurons are (expert, neuron) pairs that the router picks per token."""
    if adapter.experts:
        raise InputError(f"Attribution graphs are not available for mixture-of-experts models ({adapter.name}): "
                         "their neurons are (expert, neuron) pairs routed per token, not one MLP's; use the "
                         "Jacobian, spectra, layer views, depth and steering views instead.")


def mlp_down_modules(model: nn.Module, adapter: FamilyAdapter) -> list[nn.Module]:
    """Each block's MLP output projection (its input is the neuron vector); MoE families are refused."""
    check_graph_family(adapter)
    return [block.get_submodule(adapter.mlp_down) for block in adapter.layers(model)]


def raw_logits(model: nn.Module, adapter: FamilyAdapter, xk: torch.Tensor) -> torch.Tensor:
    """The last position's logits before any final soft-capping: ``c * unembed(final_norm(x_L))`` with the
    family's logit multiplier ``c`` (Granite ``1 / logits_scaling``, Cohere ``logit_scale``, else 1)."""
    logits = adapter.unembedding(model)(adapter.final_norm(model)(xk[:, -1:]))[0, 0]
    c = adapter.logit_multiplier(model)
    return logits if c == 1.0 else logits * c


def _bias_groups(model: nn.Module, adapter: FamilyAdapter) -> list[tuple[int, list[nn.Module]]]:
    """(layer, biased modules) per block, then ``n_layers`` for the rest (final norm, unembedding)."""
    layers = adapter.layers(model)
    inside = {id(m) for m in layers.modules()}
    groups = [(i, [m for m in block.modules() if m._parameters.get("bias") is not None])
              for i, block in enumerate(layers)]
    rest = [m for m in adapter.text_modules(model) if id(m) not in inside and m._parameters.get("bias") is not None]
    groups.append((len(layers), rest))
    return [(i, ms) for i, ms in groups if ms]


def top_targets(logits: torch.Tensor, k: int) -> list[int]:
    """The ``k`` most likely next tokens (ids)."""
    return [int(i) for i in torch.topk(logits.detach(), k).indices]


def graph_rows(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    targets: Sequence[int] | None = None,
    *,
    top_k: int = 3,
    max_nodes: int | None = 1024,
    batch_size: int = 256,
    writer: RowWriter = write_rows,
    progress: ProgressFn | None = None,
) -> GraphRows:
    """The visited targets' rows of the exact graph of ``input_ids`` (``[T]``), on the model's device.

    Targets: the token ids (default: the top ``top_k``), whose logit rows come first; then neurons,
    ``batch_size`` at a time, the most influential on the logits (:func:`lldd_core.analysis.graph_prune.influence`
    over the rows so far) first, until ``max_nodes`` (``None``: every neuron). Each batch is sorted
    by block and its rows written by ``writer``: :func:`lldd_core.analysis.graph_rows.write_rows` (one batched
    backward per block, from that block) or a baseline of
    :data:`~lldd_core.analysis.graph_rows.ROW_WRITERS` (bench/graph.py): the same rows in the same order.

    Memory: the row buffer ``(n_targets + max_nodes) * (T + n_bias + L*T*d_mlp)`` in the model's
    dtype (the influence ranking reads every row's every column), the retained forward's graph, and
    one block group's backward (:mod:`lldd_core.analysis.graph_rows`); nothing ``[rows, n_src]``
    is copied per batch.
    """
    ids = input_ids.reshape(1, -1).to(input_device(model))
    n_layers = len(adapter.layers(model))
    dtype = model_dtype(model)
    groups = _bias_groups(model, adapter)
    scales = [torch.ones((), dtype=dtype, device=ids.device, requires_grad=True) for _ in groups]
    capture = _Capture(mlp_down_modules(model, adapter))
    with contextlib.ExitStack() as stack:
        stack.enter_context(detached_mode(model, adapter))
        stack.enter_context(torch.enable_grad())
        for (_, modules), s in zip(groups, scales, strict=True):
            stack.enter_context(scaled_biases(modules, s))
        stack.enter_context(capture.active())
        run = run_to_layer(model, adapter, ids, n_layers, track_x0=True)
        logits = raw_logits(model, adapter, run.xk)
    probs = torch.softmax(logits.detach().double(), -1)
    targets = list(targets) if targets is not None else top_targets(logits, top_k)
    fw = RetainedForward(run.x0, scales, capture.live, capture.leaves, logits,
                         torch.tensor(targets, device=logits.device))
    n_neuron, neuron0 = fw.n_sources - fw.neuron0, fw.neuron0
    cap = n_neuron if max_nodes is None else min(max_nodes, n_neuron)
    rows = GraphRows(fw, torch.empty(len(targets) + cap, fw.n_sources, dtype=dtype, device=ids.device), [],
                     [g for g, _ in groups], probs, ids)
    rowsum = torch.empty(len(targets) + cap, dtype=dtype, device=ids.device)  # sum |A| of each row, kept

    def add(batch: list[int]) -> None:
        r0, r1 = len(rows.row_ids), len(rows.row_ids) + len(batch)
        writer(fw, batch, rows.A[r0:r1])
        torch.linalg.vector_norm(rows.A[r0:r1], ord=1, dim=1, out=rowsum[r0:r1])
        rows.row_ids.extend(batch)

    add([-1 - j for j in range(len(targets))])
    visited = torch.zeros(n_neuron, dtype=torch.bool, device=ids.device)
    weights = (probs[targets] / probs[targets].sum()).to(ids.device)
    while len(rows.row_ids) - len(targets) < cap:
        n = len(rows.row_ids)
        score = influence(rows.A[:n], rows.row_ids, neuron0, weights, rowsum=rowsum[:n], first_column=neuron0)
        score[visited] = -1.0
        take = min(batch_size, cap - (n - len(targets)))
        batch = sorted(torch.topk(score, take).indices.tolist())  # by block: one backward per block
        visited[batch] = True
        add(batch)
        if progress is not None:
            done = len(rows.row_ids) - len(targets)
            progress(done / cap, f"attribution rows {done}/{cap}")
    return rows


def build_graph(model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor,
                targets: Sequence[int] | None = None, **kwargs: Any) -> GraphResult:
    """The unpruned exact graph: :func:`graph_rows` (``kwargs``: its options), then :func:`assemble`."""
    return assemble(graph_rows(model, adapter, input_ids, targets, **kwargs))


def assemble(rows: GraphRows, *, edges_per_row: int | None = None) -> GraphResult:
    """Nodes (sources, then logits) and the rows' nonzero entries as edges; the result is unpruned.

    ``edges_per_row``: keep only each row's that many largest ``|w|`` (for graphs too large to list
    every entry: ``rows * L*T*d_mlp`` edges); the kept edges are exact and each visited node's
    ``node_rest`` holds the sum of the ones left out, so ``incoming + rest = value`` still checks
    completeness. ``None``: every nonzero entry, ``node_rest`` empty.
    """
    fw, A = rows.fw, rows.A
    x0, h = fw.x0.detach()[0], fw.values()
    T, nb, n_layers, d_mlp, n_src = fw.n_tokens, len(fw.scales), fw.n_layers, fw.d_mlp, fw.n_sources
    targets = fw.targets.tolist()
    kind = np.concatenate([np.full(T, KIND_EMBEDDING), np.full(nb, KIND_BIAS),
                           np.full(n_layers * T * d_mlp, KIND_NEURON), np.full(len(targets), KIND_LOGIT)])
    grid_l, grid_p, grid_i = np.meshgrid(np.arange(n_layers), np.arange(T), np.arange(d_mlp), indexing="ij")
    layer = np.concatenate([np.full(T, -1), rows.bias_layers, grid_l.ravel(), np.full(len(targets), n_layers)])
    position = np.concatenate([np.arange(T), np.full(nb, -1), grid_p.ravel(), np.full(len(targets), T - 1)])
    index = np.concatenate([rows.ids[0].cpu().numpy(), np.full(nb, -1), grid_i.ravel(), np.asarray(targets)])
    logit_values = fw.logits.detach().double().cpu().numpy()
    activation = np.concatenate([torch.linalg.vector_norm(x0.double(), dim=-1).cpu().numpy(), np.ones(nb),
                                 h.double().reshape(-1).cpu().numpy(), logit_values[targets]])
    target_node = np.array([n_src + (-1 - r) if r < 0 else T + nb + r for r in rows.row_ids], dtype=np.int64)
    visited = np.zeros(len(kind), bool)
    visited[target_node] = True
    at, weight, rest = _edges(A, edges_per_row)  # on the rows' device: only the edges come to the host
    node_rest = np.zeros(len(kind) if rest is not None else 0)
    if rest is not None:
        node_rest[target_node] = rest
    graph = GraphResult(
        node_kind=kind.astype(np.int8), node_layer=layer.astype(np.int64), node_position=position.astype(np.int64),
        node_index=index.astype(np.int64), node_activation=activation, node_influence=np.zeros(len(kind)),
        node_visited=visited, edge_source=at[:, 1], edge_target=target_node[at[:, 0]], edge_weight=weight,
        token_ids=[int(i) for i in rows.ids[0]], target_ids=targets,
        target_probs=[float(rows.probs[t]) for t in targets], n_layers=n_layers, d_mlp=d_mlp,
        pruned=False, node_threshold=1.0, edge_threshold=1.0, replacement_score=1.0, node_rest=node_rest,
    )
    if rest is not None:  # left-out edges: the full graph no longer keeps the whole logit
        graph.replacement_score = replacement_score(graph, np.ones(weight.size, bool))[0]
    return graph


def _edges(A: torch.Tensor, per_row: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``([E, 2] (row, column), [E] float64 weights, per-row sum of the entries left out or None)``."""
    if per_row is None or per_row >= A.shape[1]:
        at = torch.nonzero(A)
        return at.cpu().numpy(), A[at[:, 0], at[:, 1]].double().cpu().numpy(), None
    step = max(1, (1 << 24) // A.shape[1])  # row chunks bound the |A| temporary of topk
    ats, weights, rests = [], [], []
    for r0 in range(0, A.shape[0], step):
        block = A[r0: r0 + step]
        col = torch.topk(block.abs(), per_row, dim=1, sorted=False).indices
        w = block.gather(1, col)
        rests.append(block.sum(1, dtype=torch.float64) - w.sum(1, dtype=torch.float64))
        nz = w != 0
        row = torch.arange(r0, r0 + block.shape[0], device=A.device)[:, None].expand_as(col)
        ats.append(torch.stack([row[nz], col[nz]], 1))
        weights.append(w[nz].double())
    return (torch.cat(ats).cpu().numpy(), torch.cat(weights).cpu().numpy(), torch.cat(rests).cpu().numpy())


def build_pruned_graph(model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor,
                       targets: Sequence[int] | None = None, *, node_threshold: float | None = 0.8,
                       edge_threshold: float = 0.98, **kwargs: Any) -> GraphResult:
    """:func:`build_graph`, then :func:`lldd_core.analysis.graph_prune.prune` unless ``node_threshold`` is ``None``."""
    graph = build_graph(model, adapter, input_ids, targets, **kwargs)
    return graph if node_threshold is None else prune(graph, node_threshold, edge_threshold)


ANALYSIS = "graph"


def target_id(info: ModelInfo, token: str) -> int:
    """The id of ``token`` (one token of the vocabulary, e.g. ``" Golden"``); :class:`InputError` otherwise."""
    ids = list(info.tokenizer(token, add_special_tokens=False)["input_ids"]) if token else []
    if len(ids) != 1:
        raise InputError(f"The target {token!r} is {len(ids)} tokens; give exactly one token (mind the leading space).")
    return int(ids[0])


def analyze_graph(handle: ModelHandle, input_ids: list[int], *, target: int | None = None,
                  node_threshold: float | None = 0.8, edge_threshold: float = 0.98, max_nodes: int | None = 1024,
                  n_decode: int = 5, progress: ProgressFn | None = None) -> GraphResult:
    """The (pruned unless ``node_threshold`` is ``None``) graph of a loaded model, with token strings and the
    kept neurons' decodings (``n_decode`` tokens each, :mod:`lldd_core.analysis.graph_decode`) filled in."""
    report = progress or (lambda frac, msg: None)
    report(0.0, "Detached forward pass")
    graph = build_graph(handle.model, handle.adapter, torch.tensor(input_ids), None if target is None else [target],
                        max_nodes=max_nodes, progress=lambda f, m: report(0.05 + 0.85 * f, m))
    if not np.all(np.isfinite(graph.edge_weight)):
        raise NumericalError("The model produced NaN or Inf: use float32 or a shorter prompt.")
    report(0.9, "Pruning")
    if node_threshold is not None:
        graph = prune(graph, node_threshold, edge_threshold)
    report(0.95, "Decoding the neurons")
    graph = dataclasses.replace(graph, **decode_graph_neurons(handle.model, handle.adapter, graph,
                                                              handle.info.tokenizer, n_decode))
    graph.tokens = handle.info.token_strings(input_ids)
    graph.target_tokens = handle.info.token_strings(graph.target_ids)
    graph.model = handle.spec.model
    report(1.0, "Done")
    return graph
