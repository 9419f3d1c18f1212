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
last position). Rows are filled by batched backward passes (``is_grads_batched``), logits first,
then neurons in order of their current influence on the logits, up to ``max_nodes`` neurons.
Unvisited neurons stay as sources (their outgoing edges are exact; they have no incoming edges).
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
from .graph_prune import influence, prune
from .graph_result import KIND_BIAS, KIND_EMBEDDING, KIND_LOGIT, KIND_NEURON, GraphResult

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


def mlp_down_modules(model: nn.Module, adapter: FamilyAdapter) -> list[nn.Module]:
    """Each block's MLP output projection (its input is the neuron vector)."""
    return [block.get_submodule(adapter.mlp_down) for block in adapter.layers(model)]


def raw_logits(model: nn.Module, adapter: FamilyAdapter, xk: torch.Tensor) -> torch.Tensor:
    """The last position's logits before any final soft-capping: ``unembed(final_norm(x_L))``."""
    return adapter.unembedding(model)(adapter.final_norm(model)(xk[:, -1:]))[0, 0]


def _bias_groups(model: nn.Module, adapter: FamilyAdapter) -> list[tuple[int, list[nn.Module]]]:
    """(layer, biased modules) per block, then ``n_layers`` for the rest (final norm, unembedding)."""
    layers = adapter.layers(model)
    inside = {id(m) for m in layers.modules()}
    groups = [(i, [m for m in block.modules() if m._parameters.get("bias") is not None])
              for i, block in enumerate(layers)]
    rest = [m for m in model.modules() if id(m) not in inside and m._parameters.get("bias") is not None]
    groups.append((len(layers), rest))
    return [(i, ms) for i, ms in groups if ms]


def top_targets(logits: torch.Tensor, k: int) -> list[int]:
    """The ``k`` most likely next tokens (ids)."""
    return [int(i) for i in torch.topk(logits.detach(), k).indices]


def build_graph(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    targets: Sequence[int] | None = None,
    *,
    top_k: int = 3,
    max_nodes: int | None = 1024,
    batch_size: int = 256,
    batched: bool = True,
    progress: ProgressFn | None = None,
) -> GraphResult:
    """The unpruned exact graph of ``input_ids`` (``[T]``) for the target token ids (default: top ``top_k``).

    ``max_nodes`` caps the neurons visited as targets (``None``: all, for exact completeness of every
    neuron on small models); ``batch_size`` is the number
    of target rows per batched backward pass (``batched=False``: one backward per target instead,
    the same rows, for benchmarks). Memory: one dense row of length
    ``T + n_bias + L*T*d_mlp`` per visited target, in the model's dtype.
    """
    ids = input_ids.reshape(1, -1).to(input_device(model))
    layers = adapter.layers(model)
    n_layers, T = len(layers), ids.shape[1]
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
    target_t = torch.tensor(targets, device=logits.device)
    d_mlp = capture.leaves[0].shape[-1]
    x0 = run.x0.detach()[0]
    h = torch.stack([leaf.detach()[0] for leaf in capture.leaves])  # [L, T, m]
    n_src = T + len(groups) + n_layers * T * d_mlp
    n_neuron = n_layers * T * d_mlp
    neuron0 = T + len(groups)

    def rows_for(batch: list[int]) -> torch.Tensor:
        """Incoming edges of each target (``-1 - j``: logit ``j``; else a flat neuron index)."""
        gl = torch.zeros(len(batch), logits.shape[0], dtype=dtype, device=x0.device)
        gh = torch.zeros(len(batch), n_layers, T, d_mlp, dtype=dtype, device=x0.device)
        rows, at = torch.arange(len(batch), device=x0.device), torch.tensor(batch, device=x0.device)
        logit = at < 0  # one-hot cotangents, set in two scatters
        gl[rows[logit], target_t[-1 - at[logit]]] = 1.0
        gh.view(len(batch), -1)[rows[~logit], at[~logit]] = 1.0
        outs, leaves = (logits, *capture.live), (run.x0, *scales, *capture.leaves)
        cots = (gl, *(gh[:, i].unsqueeze(1) for i in range(n_layers)))
        if batched:
            grads = torch.autograd.grad(outs, leaves, grad_outputs=cots, is_grads_batched=True, retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
        else:  # the baseline of bench/graph.py: one backward pass per target
            single = [torch.autograd.grad(outs, leaves, grad_outputs=tuple(c[b] for c in cots), retain_graph=True,
                                          allow_unused=True, materialize_grads=True) for b in range(len(batch))]
            grads = tuple(torch.stack(parts) for parts in zip(*single, strict=True))
        gx, gs, gn = grads[0], grads[1:1 + len(scales)], grads[1 + len(scales):]
        emb = (gx[:, 0] * x0).sum(-1)  # [B, T]
        bias = torch.stack([g.reshape(-1).expand(len(batch)) for g in gs], 1) if gs else emb[:, :0]
        neur = torch.cat([g[:, 0].reshape(len(batch), -1) for g in gn], 1) * h.reshape(-1)
        return torch.cat([emb, bias, neur], 1)

    cap = n_neuron if max_nodes is None else min(max_nodes, n_neuron)
    row_ids: list[int] = [-1 - j for j in range(len(targets))]
    # one preallocated row buffer on the model's device: influence is ranked there, nothing is copied per batch
    A = torch.empty(len(targets) + cap, n_src, dtype=dtype, device=x0.device)
    A[: len(targets)] = rows_for(row_ids)
    visited = torch.zeros(n_neuron, dtype=torch.bool, device=x0.device)
    weights = (probs[targets] / probs[targets].sum()).to(x0.device)
    while len(row_ids) - len(targets) < cap:
        score = influence(A[: len(row_ids)], row_ids, neuron0, weights)[neuron0:]
        score[visited] = -1.0
        take = min(batch_size, cap - (len(row_ids) - len(targets)))
        batch = torch.topk(score, take).indices.tolist()
        visited[batch] = True
        A[len(row_ids): len(row_ids) + take] = rows_for(batch)
        row_ids += batch
        if progress is not None:
            done = len(row_ids) - len(targets)
            progress(done / cap, f"attribution rows {done}/{cap}")
    A = A.cpu().numpy()
    return _assemble(A, row_ids, x0, h, groups, targets, logits, probs, ids, n_layers, d_mlp, n_src)


def _assemble(A: np.ndarray, row_ids: list[int], x0: torch.Tensor, h: torch.Tensor,
              groups: list[tuple[int, list[nn.Module]]], targets: list[int], logits: torch.Tensor,
              probs: torch.Tensor, ids: torch.Tensor,
              n_layers: int, d_mlp: int, n_src: int) -> GraphResult:
    """Nodes (sources, then logits) and the nonzero edges as arrays; the result is unpruned."""
    T = x0.shape[0]
    nb = len(groups)
    kind = np.concatenate([np.full(T, KIND_EMBEDDING), np.full(nb, KIND_BIAS),
                           np.full(n_layers * T * d_mlp, KIND_NEURON), np.full(len(targets), KIND_LOGIT)])
    grid_l, grid_p, grid_i = np.meshgrid(np.arange(n_layers), np.arange(T), np.arange(d_mlp), indexing="ij")
    layer = np.concatenate([np.full(T, -1), [g for g, _ in groups], grid_l.ravel(), np.full(len(targets), n_layers)])
    position = np.concatenate([np.arange(T), np.full(nb, -1), grid_p.ravel(), np.full(len(targets), T - 1)])
    index = np.concatenate([ids[0].cpu().numpy(), np.full(nb, -1), grid_i.ravel(), np.asarray(targets)])
    logit_values = logits.detach().double().cpu().numpy()
    activation = np.concatenate([torch.linalg.vector_norm(x0.double(), dim=-1).cpu().numpy(), np.ones(nb),
                                 h.double().reshape(-1).cpu().numpy(), logit_values[targets]])
    target_node = np.array([n_src + (-1 - r) if r < 0 else T + nb + r for r in row_ids])
    t_idx, s_idx = np.nonzero(A)
    return GraphResult(
        node_kind=kind.astype(np.int8), node_layer=layer.astype(np.int64), node_position=position.astype(np.int64),
        node_index=index.astype(np.int64), node_activation=activation, node_influence=np.zeros(len(kind)),
        node_visited=np.isin(np.arange(len(kind)), target_node),
        edge_source=s_idx.astype(np.int64), edge_target=target_node[t_idx], edge_weight=A[t_idx, s_idx].astype(np.float64),
        token_ids=[int(i) for i in ids[0]], target_ids=[int(t) for t in targets],
        target_probs=[float(probs[t]) for t in targets], n_layers=n_layers, d_mlp=d_mlp,
        pruned=False, node_threshold=1.0, edge_threshold=1.0, replacement_score=1.0,
    )


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
