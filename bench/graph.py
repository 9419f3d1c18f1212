"""Benchmark: attribution-graph rows by batched backward passes against one backward pass per target.

All three run in one process on the same random Llama-style model and the same random prompt, through
:func:`lldd_core.analysis.graph.graph_rows` (the rows of every visited target, on the device), with the
same visiting order and cap: ours (``ROW_WRITERS["batched"]``: targets grouped by block, one
``torch.autograd.grad(is_grads_batched=True)`` per block from that block's neuron vector,
``--batch-size`` targets per ranking step); the baseline (``"one_by_one"``: one ``torch.autograd.grad``
per target from the target itself, the same traversal: what batching alone buys); and baseline 2
(``"whole_graph"``: one backward per target through the whole retained graph, as lldd's first version
did). The script prints each path's time, the two speed ratios, the largest difference between the rows
and how many rows were compared, then times the assembly of the result
(:func:`lldd_core.analysis.graph.assemble`, the same for all: the nonzero entries as edges, or the
``--edges-per-row`` largest with the rest summed per node) and checks completeness on it. It exits non-zero when the rows disagree by more than the dtype's
tolerance. Run from the repository root: ``python bench/graph.py --help`` (``--hidden 64 --layers 2
--tokens 8`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_llama_shape, add_run_options, bench_parser, sync
from jacobian import DTYPES, TOLERANCE, build_model  # bench/jacobian.py: the same random Llama
from summary import add_row, seconds

from lldd_core.analysis.graph import assemble, graph_rows
from lldd_core.analysis.graph_result import KIND_BIAS, KIND_EMBEDDING
from lldd_core.analysis.graph_rows import ROW_WRITERS, GraphRows
from lldd_core.models.arch import adapter_for

T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    add_llama_shape(p, layers=8, tokens=32)
    p.add_argument("--max-nodes", type=int, default=256, help="neurons visited as targets (the cap)")
    p.add_argument("--batch-size", type=int, default=128, help="target rows per batched backward pass")
    p.add_argument("--edges-per-row", type=int, default=None,
                   help="keep each row's largest edges only (None: every nonzero entry), the rest summed per node")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_run_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    args.repeats = 1
    model = build_model(args, dtype)
    adapter = adapter_for(model.config.model_type)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab, (args.tokens,), generator=gen).to(args.device)

    cpu: dict[str, float] = {}  # process CPU seconds: on a shared machine less sensitive to others' load than wall

    def timed(fn: Callable[[], T], name: str) -> tuple[T, float]:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        cpu[name] = time.process_time() - c0
        return out, time.perf_counter() - t0

    def rows(writer: str) -> GraphRows:
        return graph_rows(model, adapter, ids, max_nodes=args.max_nodes, batch_size=args.batch_size,
                          writer=ROW_WRITERS[writer])

    graph_rows(model, adapter, ids[: min(4, args.tokens)], max_nodes=8, batch_size=8)  # warm-up
    ours, t_ours = timed(lambda: rows("batched"), "ours")
    ref, t_ref = timed(lambda: rows("one_by_one"), "ref")
    whole, t_whole = timed(lambda: rows("whole_graph"), "whole")
    same_order = ours.row_ids == ref.row_ids == whole.row_ids
    # the same visiting order gives the same row numbers; otherwise compare the rows both visited
    shared = sorted(set(ours.row_ids) & set(ref.row_ids))
    at_ours = {r: k for k, r in enumerate(ours.row_ids)}
    at_ref = {r: k for k, r in enumerate(ref.row_ids)}
    diff, scale = 0.0, 0.0
    for i in range(0, len(shared), 16):  # row chunks: no second copy of the buffer
        part = shared[i: i + 16]
        a = ours.A[[at_ours[r] for r in part]].double()
        b = ref.A[[at_ref[r] for r in part]].double()
        c = whole.A[[at_ref[r] for r in part]].double() if same_order else b
        diff = max(diff, float((a - b).abs().max()), float((c - b).abs().max()))
        scale = max(scale, float(b.abs().max()))
    rel = diff / (scale or 1.0)
    n_rows = len(ours.row_ids)
    del ref, whole
    graph, t_asm = timed(lambda: assemble(ours, edges_per_row=args.edges_per_row), "asm")
    visited = graph.node_visited & (graph.node_kind != KIND_EMBEDDING) & (graph.node_kind != KIND_BIAS)
    inc = graph.incoming_sums() + (graph.node_rest if graph.node_rest.size else 0.0)
    completeness = float(np.max(np.abs(inc - graph.node_activation)[visited]) / np.max(np.abs(graph.node_activation[visited])))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random Llama, d={args.hidden}, intermediate={model.config.intermediate_size}, "
          f"layers={args.layers}, heads={args.heads}/{model.config.num_key_value_heads} kv, vocab={args.vocab}, "
          f"{n_params / 1e6:.1f}M params, {args.dtype}, {args.device}")
    print(f"prompt: {args.tokens} random tokens; torch {torch.__version__}, threads={torch.get_num_threads()}; "
          f"{n_rows} target rows ({len(graph.target_ids)} logits + up to {args.max_nodes} neurons), "
          f"{graph.n_layers * args.tokens * graph.d_mlp} neurons as sources")
    print()
    print(f"{'rows of the visited targets':<60} {'wall s':>9} {'CPU s':>9}")
    print(f"{'ours: batched backward per block, ' + str(args.batch_size) + ' targets per step':<60} {t_ours:>9.3f} "
          f"{cpu['ours']:>9.3f}")
    print(f"{'baseline: one backward per target, from the target':<60} {t_ref:>9.3f} {cpu['ref']:>9.3f}")
    print(f"{'baseline 2: one backward per target, whole graph (first version)':<60} {t_whole:>9.3f} "
          f"{cpu['whole']:>9.3f}")
    keep = "all nonzero entries" if args.edges_per_row is None else f"top {args.edges_per_row} per row"
    print(f"{'assembly of the result (shared), ' + keep:<60} {t_asm:>9.3f} {cpu['asm']:>9.3f}")
    print()
    print(f"speed ratio (baseline / ours), rows: {t_ref / t_ours:.2f}x wall, {cpu['ref'] / cpu['ours']:.2f}x CPU; "
          f"with the shared assembly: {(t_ref + t_asm) / (t_ours + t_asm):.2f}x wall")
    print(f"speed ratio (baseline 2 / ours), rows: {t_whole / t_ours:.2f}x wall, {cpu['whole'] / cpu['ours']:.2f}x CPU; "
          f"with the shared assembly: {(t_whole + t_asm) / (t_ours + t_asm):.2f}x wall")
    print(f"visiting order identical: {same_order}; rows compared: {len(shared)}/{n_rows}")
    print(f"max |A - A_baseline| (ours, baseline 2): {diff:.3e}   (max |A| = {scale:.3e}; relative {rel:.3e}, "
          f"tolerance {TOLERANCE[dtype]:.0e})")
    print(f"edges: {graph.edge_weight.size}; completeness (kept edges + rest = value), max rel. error {completeness:.1e}")
    ok = rel <= TOLERANCE[dtype] and len(shared) >= 0.9 * n_rows and completeness <= 10 * TOLERANCE[dtype]
    add_row(args.summary, "graph", f"attribution graph rows, {args.tokens} tokens, {n_rows} target rows, {args.dtype}",
            f"random Llama d={args.hidden}, {args.layers} layers, MLP {model.config.intermediate_size}",
            args.device, seconds(t_ours), f"{seconds(t_ref)} (one backward per target; whole graph {seconds(t_whole)})",
            t_ref / t_ours,
            f"max rel. diff {rel:.1e}; assembly {seconds(t_asm)}" + ("" if ok else " FAIL"))
    print("OK" if ok else "FAIL: the rows disagree")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
