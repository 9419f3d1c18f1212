"""Rows of an exact attribution graph: each target's incoming edges, from one retained detached forward.

A row has ``T + n_bias + L*T*d_mlp`` columns: the embedding node of each position, the bias nodes,
then every neuron ``(layer l, position q, index j)`` in that order. The row of a target ``t`` holds
``value(s) * dt/ds`` for every source ``s``: ``g_{x_0} . x_0`` per position, ``dt/ds_g`` for the bias
channel ``s_g = 1`` of each bias group, and ``h_{l,q,j} * (dt/dh_l)[q, j]`` with ``h_l`` the re-injected
leaf of block ``l`` (see :mod:`lldd_core.analysis.graph`).

Where a backward starts (:func:`write_rows`, the fast path). A logit's backward starts at the
logits. A neuron ``(b, p, i)``'s starts at ``h_b`` as computed (before it is swapped for its leaf):
``h_b`` reads the stream entering block ``b``'s MLP, which depends on ``x_0``, the biases of blocks
``<= b`` and the leaves of blocks ``< b`` only, so autograd runs through blocks ``0..b`` and block
``b``'s MLP read-in, never through the blocks above, the unembedding or any other block's read-in
(each leaf cuts its block's MLP out of the backward). Its columns at layers ``>= b`` are exactly 0.
Targets are grouped by block: one ``torch.autograd.grad(is_grads_batched=True)`` per group, over
one-hot cotangents ``[B, 1, T, d_mlp]`` on ``h_b`` (``[B, V]`` on the logits).

:func:`write_rows_one_by_one` is the benchmark baseline (``build_graph(batched=False)``): the
straightforward one backward per target, from the target itself (the same start and the same traversal
as the fast path, so the benchmark measures what batching buys and nothing else);
:func:`write_rows_whole_graph` the second one: one backward per target through the whole graph (every
block and MLP read-in, whatever the target), as lldd's first version computed every row.

Memory of one group: the cotangents ``B*T*d_mlp``, the leaf gradients ``B*b*T*d_mlp`` (the size of
the rows being written) and autograd's batched intermediates (``B*T*d`` per block), model dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch


@dataclasses.dataclass
class RetainedForward:
    """One detached forward kept for backward passes: its leaves, its neuron values and its raw logits.

    ``x0`` ``[1, T, d]`` (a leaf), ``scales``: one bias-channel scalar (``= 1``, a leaf) per bias
    group; ``live[b]``: block ``b``'s neuron vector ``h_b`` ``[1, T, d_mlp]`` as computed, in the graph;
    ``leaves[b]``: the leaf copy of it that block ``b``'s output projection read; ``logits`` ``[V]``;
    ``targets``: the target token ids.
    """

    x0: torch.Tensor
    scales: list[torch.Tensor]
    live: list[torch.Tensor]
    leaves: list[torch.Tensor]
    logits: torch.Tensor
    targets: torch.Tensor

    @property
    def n_layers(self) -> int:
        return len(self.leaves)

    @property
    def n_tokens(self) -> int:
        return self.x0.shape[1]

    @property
    def d_mlp(self) -> int:
        return self.leaves[0].shape[-1]

    @property
    def neuron0(self) -> int:
        """The first neuron column."""
        return self.n_tokens + len(self.scales)

    @property
    def n_sources(self) -> int:
        return self.neuron0 + self.n_layers * self.n_tokens * self.d_mlp

    def values(self) -> torch.Tensor:
        """Every neuron's value ``[L, T, d_mlp]`` (detached)."""
        return torch.stack([leaf.detach()[0] for leaf in self.leaves])


@dataclasses.dataclass
class GraphRows:
    """The visited targets' rows: ``A[k]`` is the row of ``row_ids[k]`` (``-1 - j``: logit ``j``; else a flat
    neuron index), on the model's device; with the forward they came from, the bias groups' layers,
    the softmax of the logits (float64) and the prompt ids ``[1, T]``."""

    fw: RetainedForward
    A: torch.Tensor
    row_ids: list[int]
    bias_layers: list[int]
    probs: torch.Tensor
    ids: torch.Tensor


def _fill(fw: RetainedForward, out: torch.Tensor, gx: torch.Tensor, gs: Sequence[torch.Tensor],
          gn: Sequence[torch.Tensor]) -> None:
    """Write rows ``out`` ``[B, n_src]`` from batched gradients: ``gx`` ``[B, 1, T, d]`` w.r.t. ``x_0``,
    ``gs[g]`` ``[B]`` w.r.t. the bias scales, ``gn[l]`` ``[B, 1, T, d_mlp]`` w.r.t. the leaves of blocks
    ``l < len(gn)`` (the rest of the neuron columns are 0)."""
    B, T, L = out.shape[0], fw.n_tokens, fw.n_layers
    torch.sum(gx[:, 0] * fw.x0.detach()[0], -1, out=out[:, :T])
    for g, grad in enumerate(gs):
        out[:, T + g] = grad.reshape(-1).expand(B)  # an unused scale (a bias above the block) is one 0
    neurons = out[:, fw.neuron0:].view(B, L, T, fw.d_mlp)
    for layer, grad in enumerate(gn):
        torch.mul(grad[:, 0], fw.leaves[layer].detach()[0], out=neurons[:, layer])
    neurons[:, len(gn):].zero_()


def _groups(batch: Sequence[int], per_block: int) -> list[tuple[int, int, int]]:
    """``(start, stop, block)`` runs of a batch sorted with the logits first (block ``-1``), then by neuron."""
    runs: list[tuple[int, int, int]] = []
    for k, target in enumerate(batch):
        block = -1 if target < 0 else target // per_block
        if runs and runs[-1][2] == block:
            runs[-1] = (runs[-1][0], k + 1, block)
        else:
            runs.append((k, k + 1, block))
    return runs


def _start(fw: RetainedForward, at: torch.Tensor, block: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Where the rows of ``at`` (all logits, ``block = -1``, or all neurons of ``block``) start their backward:
    the output, the leaves below it and the one-hot cotangents ``[len(at), *output.shape]``."""
    rows = torch.arange(len(at), device=at.device)
    if block < 0:
        output, leaves = fw.logits, fw.leaves
        cot = torch.zeros(len(at), *output.shape, dtype=output.dtype, device=at.device)
        cot[rows, fw.targets[-1 - at]] = 1.0
    else:
        output, leaves = fw.live[block], fw.leaves[:block]
        cot = torch.zeros(len(at), *output.shape, dtype=output.dtype, device=at.device)
        cot.view(len(at), -1)[rows, at - block * fw.n_tokens * fw.d_mlp] = 1.0
    return output, leaves, cot


def write_rows(fw: RetainedForward, batch: Sequence[int], out: torch.Tensor, *, batched: bool = True) -> None:
    """Rows of ``batch`` into ``out`` ``[len(batch), n_src]``, one batched backward per block (module doc).

    ``batch[k]``: ``-1 - j`` for target logit ``j``, else a flat neuron index ``(b*T + p)*d_mlp + i``;
    sorted (logits first, then by index), so each block's targets are one run of rows. ``batched=False``
    (the benchmark baseline, :func:`write_rows_one_by_one`): the same backward from the same start, one
    target at a time.
    """
    per_block = fw.n_tokens * fw.d_mlp
    n_s = len(fw.scales)
    for start, stop, block in _groups(batch, per_block):
        output, leaves, cot = _start(fw, torch.tensor(batch[start:stop], device=fw.x0.device), block)
        inputs = (fw.x0, *fw.scales, *leaves)
        if batched:
            grads = torch.autograd.grad((output,), inputs, grad_outputs=(cot,), is_grads_batched=True,
                                        retain_graph=True, allow_unused=True, materialize_grads=True)
        else:
            single = [torch.autograd.grad((output,), inputs, grad_outputs=(c,), retain_graph=True, allow_unused=True,
                                          materialize_grads=True) for c in cot]
            grads = tuple(torch.stack(parts) for parts in zip(*single, strict=True))
        _fill(fw, out[start:stop], grads[0], grads[1:1 + n_s], grads[1 + n_s:])


def write_rows_one_by_one(fw: RetainedForward, batch: Sequence[int], out: torch.Tensor) -> None:
    """The same rows by one backward per target, each from the target itself (the baseline; module doc)."""
    write_rows(fw, batch, out, batched=False)


def write_rows_whole_graph(fw: RetainedForward, batch: Sequence[int], out: torch.Tensor) -> None:
    """The same rows by one backward per target through the whole graph: the target's one-hot cotangent on the
    logits and on every block's ``h`` (zeros but one), every leaf an input, so each backward runs through every
    block and every MLP read-in (lldd's first graph version, kept as the second baseline of bench/graph.py)."""
    outputs = (fw.logits, *fw.live)
    inputs = (fw.x0, *fw.scales, *fw.leaves)
    n_s = len(fw.scales)
    flat_h = fw.n_layers * fw.n_tokens * fw.d_mlp
    for k, target in enumerate(batch):
        gl = torch.zeros_like(fw.logits)
        gh = torch.zeros(flat_h, dtype=gl.dtype, device=gl.device)
        if target < 0:
            gl[fw.targets[-1 - target]] = 1.0
        else:
            gh[target] = 1.0
        gh = gh.view(fw.n_layers, *fw.live[0].shape)
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=(gl, *gh), retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        _fill(fw, out[k:k + 1], grads[0][None], [g[None] for g in grads[1:1 + n_s]],
              [g[None] for g in grads[1 + n_s:]])


RowWriter = Callable[[RetainedForward, Sequence[int], torch.Tensor], None]
#: How rows are written: the fast path and the two baselines of bench/graph.py (the same rows, to rounding).
ROW_WRITERS: dict[str, RowWriter] = {
    "batched": write_rows,
    "one_by_one": write_rows_one_by_one,
    "whole_graph": write_rows_whole_graph,
}
