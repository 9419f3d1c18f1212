"""Benchmark: one prompt's gain analysis, the blockwise path against today's (and, optionally, a naive one).

Every path computes, for one prompt and given concept directions ``v_0 .. v_L`` (readout
``v_L^T x_L``), over every injection layer ``k = 0 .. L-1``:

* the **predicted** gains of the order-``r`` LLV surrogate on a depth-Krylov basis grown from the
  prompt's own Jacobians (the prompt is its own operating set),
* the **measured** gains ``(v_L^T x_L(ε v_k) - v_L^T x_L) / ε``,
* the **exact** linear gains ``∂(v_L^T x_L)/∂x_k · v_k``.

Blockwise path (what the product runs, :func:`lldd_core.analysis.gains.prompt_gains` on
:func:`lldd_core.forward.blockwise.prompt_blocks`): the prefix runs once; each block is then called
alone from its known state with its own layer of the prefix cache (no copy), the live mode entered
once: Arnoldi's ``r - 1`` one-column products at block 0 (each a backward through the block's kept
graph), then per layer one vmapped JVP (the Krylov
columns and every injection's exact-gain tangent) and one batched evaluation (the next state and
every injected trajectory).

Today's path (the baseline, :func:`lldd_core.analysis.gains.prompt_gains_reference`): each
Jacobian action re-runs the last token from block 0 through the model on a deep copy of the prefix
cache, re-entering the live mode; the measured gains are one batched last-token pass, the exact
ones one backward pass.

Naive path (``--naive``; the previous baseline, minutes at the default size): every quantity from
full-sequence passes: the full ``d x d`` Jacobian of each block at the last token by
``torch.autograd.functional.jacobian(vectorize=True)`` through a full-sequence forward; basis,
reduced model and exact gains from those matrices; one full-sequence forward per injected layer.

The script prints, per path, the median wall time, its ratio to today's path, the time in units of
one full-sequence forward of the prompt, and the deterministic cost: **layer evaluations** (block
calls that run the block's arithmetic, counted by hooks, any batch or vmapped width, and products
through a block's kept graph; see :mod:`lldd_core.forward.counting`) and those over ``L`` (forward-pass equivalents: a full forward
evaluates every block once). Then the largest differences between the paths' curves, relative to
each curve's max |value|; it exits 1 when the blockwise path differs from today's by more than
1e-10 (float64) or 1e-3 (float32: the measured gains divide a readout difference by ε).

    python bench/gains.py                        # 12 layers, d = 768, 32 tokens, r = 32 (~20 s on 2 cores)
    python bench/gains.py --dtype float64        # the 1e-10 agreement check
    python bench/gains.py --layers 4 --hidden 256 --tokens 16 --naive

``--device cuda`` runs the paths on the GPU and synchronizes around every timed call
(``bench/gpu.sh`` runs it at real size); ``--summary FILE`` appends the result row of its table
(blockwise against today's path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_gpt2_shape, add_run_options, bench_parser, sync
from summary import add_row, seconds  # bench/summary.py: this folder is sys.path[0] for a bench
from transformers import GPT2Config, GPT2LMHeadModel

from lldd_core.analysis.gains import prompt_gains, prompt_gains_reference
from lldd_core.forward.blockwise import prompt_blocks
from lldd_core.forward.counting import counted_blocks
from lldd_core.forward.depth import _block_hooks, prompt_context
from lldd_core.forward.hooks import run_until
from lldd_core.forward.linearize import live_mode
from lldd_core.linalg.llv import _orthonormal_with_first, predicted_gains
from lldd_core.models.arch import adapter_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    add_gpt2_shape(p, vocab_help="vocabulary size (does not enter the gains)")
    p.add_argument("--tokens", type=int, default=32, help="prompt length T")
    p.add_argument("--order", type=int, default=32, help="reduced order r")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each fast path (the naive one runs once)")
    p.add_argument("--naive", action="store_true", help="also run the naive full-Jacobian path (minutes)")
    add_run_options(p)
    return p.parse_args(argv)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


# --- the naive path ------------------------------------------------------------------------------


def _full_forward(model, adapter, ids: torch.Tensor, replace: dict, stop_after: int) -> torch.Tensor:
    """Block ``stop_after``'s output at the last token of a full-sequence forward with block-input transforms."""
    out: dict = {}
    with _block_hooks(adapter.layers(model), replace=replace, stop_after=stop_after, out=out):
        run_until(model, input_ids=ids[None], use_cache=False)
    return out[("out", stop_after)][0, -1]


def _set_last(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def replace(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[:, :-1], x.to(h.dtype).reshape(1, 1, -1)], dim=1)

    return replace


def _add_last(shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def replace(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, -1] = h[:, -1] + shift.to(h.dtype)
        return h

    return replace


def naive_gains(model, adapter, ids: torch.Tensor, V: torch.Tensor, order: int, eps: float) -> dict[str, torch.Tensor]:
    """Predicted, measured and exact gains from full-sequence passes and full per-layer Jacobians."""
    L = len(adapter.layers(model))
    with live_mode(model, adapter):
        with torch.no_grad():
            states = [None] * (L + 1)
            out: dict = {}
            with _block_hooks(adapter.layers(model), capture_inputs=range(L), capture_outputs=[L - 1], out=out):
                model(input_ids=ids[None], use_cache=False)
            for j in range(L):
                states[j] = out[("in", j)][0, -1]
            states[L] = out[("out", L - 1)][0, -1]
        # full Jacobian of each block at the last token, through a full-sequence forward
        J = []
        for layer in range(L):
            def f(x: torch.Tensor, layer: int = layer) -> torch.Tensor:
                return _full_forward(model, adapter, ids, {layer: _set_last(x)}, layer)

            J.append(torch.autograd.functional.jacobian(f, states[layer], vectorize=True).detach())
        with torch.no_grad():
            # depth-Krylov basis from the full matrices (same rule as lldd_core.linalg.llv.krylov_bases)
            seq = [V[0]]
            for _ in range(order - 1):
                seq.append(J[0] @ seq[-1])
            cand = torch.stack(seq[1:], dim=1) if order > 1 else V[0][:, None]
            bases = [_orthonormal_with_first(V[0], cand, order)]
            for layer in range(L):
                bases.append(_orthonormal_with_first(V[layer + 1], J[layer] @ bases[-1][:, : max(order - 1, 1)], order))
            predicted = predicted_gains([bases[l + 1].T @ J[l] @ bases[l] for l in range(L)])
            # exact: v_L^T J_{L-1} ... J_{k+1} J_k v_k
            row = V[L].clone()
            exact = torch.empty(L, dtype=V.dtype, device=V.device)
            for k in range(L - 1, -1, -1):
                exact[k] = row @ J[k] @ V[k]
                row = J[k].T @ row
            # measured: one full-sequence forward per injected layer
            y0 = states[L] @ V[L]
            measured = torch.stack([
                (_full_forward(model, adapter, ids, {k: _add_last(eps * V[k])}, L - 1) @ V[L] - y0) / eps
                for k in range(L)
            ])
    return {"predicted": predicted, "measured": measured, "exact": exact}


def blockwise_gains(model, adapter, ids: torch.Tensor, V: torch.Tensor, order: int, eps: float) -> dict:
    out = prompt_gains(prompt_blocks(model, adapter, ids), V, order=order, eps=eps)
    return {"predicted": out.predicted, "measured": out.measured, "exact": out.exact}


def todays_gains(model, adapter, ids: torch.Tensor, V: torch.Tensor, order: int, eps: float) -> dict:
    out = prompt_gains_reference(prompt_context(model, adapter, ids), V, order=order, eps=eps)
    return {"predicted": out.predicted, "measured": out.measured, "exact": out.exact}


PATHS = {  # name -> (row label, function); today's path is the baseline of the ratios
    "today": ("today's path (re-run from block 0 per action)", todays_gains),
    "blockwise": ("blockwise (each block alone, batched)", blockwise_gains),
    "naive": ("naive (full-seq Jacobians + forward per layer)", naive_gains),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-3}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    config = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, vocab_size=args.vocab,
                        n_positions=max(64, args.tokens), attn_implementation="eager")
    model = GPT2LMHeadModel(config).to(dtype).eval()
    adapter = adapter_for(model.config.model_type)
    ids = torch.randint(0, args.vocab, (args.tokens,))
    L, d = args.layers, args.hidden
    V = torch.nn.functional.normalize(torch.randn(L + 1, d, dtype=dtype), dim=-1)
    model, ids, V = model.to(args.device), ids.to(args.device), V.to(args.device)  # the same numbers on any device
    print(f"random GPT-2: {L} layers, d = {d}, {args.tokens}-token prompt, order {args.order}, ε = {args.eps}, "
          f"{args.dtype}, {args.device}, {torch.get_num_threads()} threads")

    with torch.no_grad():
        model(input_ids=ids[None], use_cache=False)  # warm up
        fwd = statistics.median(_timed(lambda: model(input_ids=ids[None], use_cache=False))[0] for _ in range(5))
    print(f"one full-sequence forward: {fwd * 1e3:.1f} ms (the unit of the time column's forward equivalents)")

    names = ["today", "blockwise"] + (["naive"] if args.naive else [])
    results, times, counts = {}, {}, {}
    for name in names:
        fn = PATHS[name][1]
        with counted_blocks(model, adapter) as count:  # the counted run doubles as the warm-up (vmap, allocator)
            results[name] = fn(model, adapter, ids, V, args.order, args.eps)
        counts[name] = count.evaluations
    runs: dict[str, list[float]] = {name: [] for name in names if name != "naive"}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        for name in runs:
            runs[name].append(_timed(lambda name=name: PATHS[name][1](model, adapter, ids, V, args.order, args.eps))[0])
    times = {name: statistics.median(ts) for name, ts in runs.items()}
    if args.naive:
        times["naive"] = _timed(lambda: naive_gains(model, adapter, ids, V, args.order, args.eps))[0]

    base = times["today"]
    print(f"\n{'path':<48} {'time':>9} {'ratio':>7} {'time / fwd':>11} {'layer evals':>12} {'/ L':>6}")
    for name in names:
        print(f"{PATHS[name][0]:<48} {times[name]:8.3f}s {base / times[name]:6.2f}x {times[name] / fwd:11.1f} "
              f"{counts[name]:12d} {counts[name] / L:6.2f}")
    print("(ratio: today's time / the path's; layer evals: block calls that ran the block, counted by hooks, plus\n"
          " products through a block's kept graph; / L: forward-pass equivalents"
          + ("; the naive path's calls are full-sequence passes vmapped over d columns, so its count understates it)"
             if args.naive else ")"))

    diffs = {key: _relative(results["blockwise"][key], results["today"][key]) for key in ("predicted", "measured", "exact")}
    print("\nlargest difference blockwise - today (relative to the curve's max |value|):")
    for key, value in diffs.items():
        print(f"  {key:<10} {value:.2e}")
    if args.naive:
        print("largest difference blockwise - naive:")
        for key in ("predicted", "measured", "exact"):
            print(f"  {key:<10} {_relative(results['blockwise'][key], results['naive'][key]):.2e}")
    fast = results["blockwise"]
    print(f"  predicted vs exact (blockwise): {_relative(fast['predicted'], fast['exact']):.2e}"
          f"  (order {args.order} > {L} layers: the prompt's own Krylov basis is exact up to rounding)")
    t_fast = times["blockwise"]
    add_row(args.summary, "gains", f"one prompt's gain analysis ({args.tokens} tokens, order {args.order}, "
            f"{L} layers)", f"random GPT-2 d={d}, {L} layers, {args.heads} heads", args.device,
            f"{seconds(t_fast)} = {t_fast / fwd:.1f} forwards ({counts['blockwise'] / L:.2f} by layer evaluations)",
            f"{seconds(base)} = {base / fwd:.1f} forwards ({counts['today'] / L:.2f} by layer evaluations; "
            "the path before blockwise calls)", base / t_fast,
            f"within {diffs['predicted']:.1e} ({diffs['measured']:.1e} measured, {diffs['exact']:.1e} exact)")
    worst = max(diffs.values())
    if worst > TOLERANCE[args.dtype]:
        print(f"FAIL: the blockwise path differs from today's by {worst:.1e} > {TOLERANCE[args.dtype]:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
