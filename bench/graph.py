"""Benchmark: attribution-graph rows by batched backward passes against one backward pass per target.

Both run in one process on the same random Llama-style model and the same random prompt, through
:func:`lldd_core.analysis.graph.build_graph`: ``batched=True`` (``torch.autograd.grad(is_grads_batched=True)``
over ``--batch-size`` target cotangents at once) and ``batched=False`` (the same visiting order and
cap, one ``torch.autograd.grad`` per target row). The script prints each method's time, the speed
ratio, how many visited targets the two share and the largest difference between their edge weights
on the shared rows, and exits non-zero when the edges disagree by more than the dtype's tolerance.
Run from the repository root: ``python bench/graph.py --help`` (``--hidden 64 --layers 2 --tokens 8``
for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_llama_shape, add_run_options, bench_parser, sync
from jacobian import DTYPES, TOLERANCE, build_model  # bench/jacobian.py: the same random Llama
from summary import add_row, seconds

from lldd_core.analysis.graph import build_graph
from lldd_core.analysis.graph_result import GraphResult
from lldd_core.models.arch import adapter_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    add_llama_shape(p, layers=8, tokens=32)
    p.add_argument("--max-nodes", type=int, default=256, help="neurons visited as targets (the cap)")
    p.add_argument("--batch-size", type=int, default=128, help="target rows per batched backward pass")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_run_options(p)
    return p.parse_args(argv)


def edge_map(g: GraphResult) -> tuple[np.ndarray, np.ndarray]:
    """Edges keyed by ``target * N + source`` (sorted keys, weights)."""
    keys = g.edge_target.astype(np.int64) * len(g.node_kind) + g.edge_source
    order = np.argsort(keys)
    return keys[order], g.edge_weight[order]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    args.repeats = 1
    model = build_model(args, dtype)
    adapter = adapter_for(model.config.model_type)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab, (args.tokens,), generator=gen).to(args.device)

    def timed(batched: bool) -> tuple[GraphResult, float]:
        sync()
        t0 = time.perf_counter()
        g = build_graph(model, adapter, ids, max_nodes=args.max_nodes, batch_size=args.batch_size, batched=batched)
        sync()
        return g, time.perf_counter() - t0

    build_graph(model, adapter, ids[: min(4, args.tokens)], max_nodes=8, batch_size=8)  # warm-up
    ours, t_ours = timed(True)
    ref, t_ref = timed(False)

    visited_ours = set(np.nonzero(ours.node_visited)[0].tolist())
    visited_ref = set(np.nonzero(ref.node_visited)[0].tolist())
    shared = visited_ours & visited_ref
    k_ours, w_ours = edge_map(ours)
    k_ref, w_ref = edge_map(ref)
    rows = np.array(sorted(shared))
    in_ours = np.isin(k_ours // len(ours.node_kind), rows)
    in_ref = np.isin(k_ref // len(ref.node_kind), rows)
    union = np.union1d(k_ours[in_ours], k_ref[in_ref])  # an edge missing from one side counts as 0 there
    a, b = np.zeros(union.size), np.zeros(union.size)
    a[np.searchsorted(union, k_ours[in_ours])] = w_ours[in_ours]
    b[np.searchsorted(union, k_ref[in_ref])] = w_ref[in_ref]
    diff = float(np.max(np.abs(a - b))) if union.size else 0.0
    scale = float(np.max(np.abs(w_ref))) if w_ref.size else 1.0
    rel = diff / scale

    n_params = sum(p.numel() for p in model.parameters())
    n_rows = int(ours.node_visited.sum())
    print(f"model: random Llama, d={args.hidden}, intermediate={model.config.intermediate_size}, "
          f"layers={args.layers}, heads={args.heads}/{model.config.num_key_value_heads} kv, vocab={args.vocab}, "
          f"{n_params / 1e6:.1f}M params, {args.dtype}, {args.device}")
    print(f"prompt: {args.tokens} random tokens; torch {torch.__version__}, threads={torch.get_num_threads()}; "
          f"{n_rows} target rows ({len(ours.target_ids)} logits + up to {args.max_nodes} neurons), "
          f"{ours.n_layers * args.tokens * ours.d_mlp} neurons as sources")
    print()
    print(f"{'method':<52} {'s':>9}")
    print(f"{'ours: batched backward, ' + str(args.batch_size) + ' targets per pass':<52} {t_ours:>9.3f}")
    print(f"{'baseline: one backward per target':<52} {t_ref:>9.3f}")
    print()
    print(f"speed ratio (baseline / ours): {t_ref / t_ours:.2f}x")
    print(f"visited targets shared: {len(shared)}/{n_rows}; edges compared on the shared rows: {union.size}")
    print(f"max |w_ours - w_baseline|: {diff:.3e}   (max |w| = {scale:.3e}; relative {rel:.3e}, "
          f"tolerance {TOLERANCE[dtype]:.0e})")
    ok = rel <= TOLERANCE[dtype] and len(shared) >= 0.9 * n_rows
    add_row(args.summary, "graph", f"attribution graph, {args.tokens} tokens, {n_rows} target rows, {args.dtype}",
            f"random Llama d={args.hidden}, {args.layers} layers, MLP {model.config.intermediate_size}",
            args.device, seconds(t_ours), f"{seconds(t_ref)} (one backward per target)", t_ref / t_ours,
            f"max rel. diff {rel:.1e}" + ("" if ok else " FAIL"))
    print("OK" if ok else "FAIL: the edges disagree")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
