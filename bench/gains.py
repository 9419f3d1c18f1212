"""Benchmark: one prompt's gain analysis, the frozen-context fast path against a naive one.

Both paths compute, for one prompt and given concept directions ``v_0 .. v_L`` (readout
``v_L^T x_L``), over every injection layer ``k = 0 .. L-1``:

* the **predicted** gains of the order-``r`` LLV surrogate on a depth-Krylov basis grown from the
  prompt's own Jacobians (the prompt is its own operating set),
* the **measured** gains ``(v_L^T x_L(ε v_k) - v_L^T x_L) / ε``,
* the **exact** linear gains ``∂(v_L^T x_L)/∂x_k · v_k``.

Fast path (what the product runs, :func:`lldd_core.analysis.gains.prompt_gains`): the prefix runs once and
keeps its KV cache; the last token alone is re-run for everything else: ``A_l P_l`` by vmapped
JVPs (``r`` per layer, each action also growing the next basis), all ``L`` injections in one
batched pass, the exact gains from one backward pass.

Naive path: every quantity from full-sequence passes: the full ``d x d`` Jacobian of each block at
the last token by ``torch.autograd.functional.jacobian(vectorize=True)`` through a full-sequence
forward; the basis, the reduced model and the exact gains (a product of the full Jacobians) from
those matrices; one full-sequence forward per injected layer for the measured gains.

The numbers must agree (float32 rounding); the script prints the largest differences, the wall
times, their ratio, and each cost in forward-pass equivalents (one full-sequence forward of the
prompt without gradients).

    python bench/gains.py                        # 12 layers, d = 768, 32 tokens, r = 32 (~1-2 min on 2 cores)
    python bench/gains.py --layers 4 --hidden 256 --tokens 16

``--device cuda`` runs both paths on the GPU and synchronizes around every timed call
(``bench/gpu.sh`` runs it at real size); ``--summary FILE`` appends the result row of its table.
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

from lldd_core.analysis.gains import prompt_gains
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
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the fast path (the naive one runs once)")
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


def fast_gains(model, adapter, ids: torch.Tensor, V: torch.Tensor, order: int, eps: float) -> dict[str, torch.Tensor]:
    ctx = prompt_context(model, adapter, ids)
    out = prompt_gains(ctx, V, order=order, eps=eps)
    return {"predicted": out.predicted, "measured": out.measured, "exact": out.exact}


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
    print(f"one full-sequence forward: {fwd * 1e3:.1f} ms (the unit of 'forward equivalents')")

    fast_gains(model, adapter, ids, V, args.order, args.eps)  # warm up (vmap/jvp tracing, allocator)
    fast_times = []
    for _ in range(args.repeats):
        t, fast = _timed(lambda: fast_gains(model, adapter, ids, V, args.order, args.eps))
        fast_times.append(t)
    t_fast = statistics.median(fast_times)
    t_naive, naive = _timed(lambda: naive_gains(model, adapter, ids, V, args.order, args.eps))

    print(f"\n{'path':<44} {'time':>9} {'forward eq.':>12} {'ratio':>7}")
    print(f"{'naive (full-seq Jacobians + forward per layer)':<44} {t_naive:8.2f}s {t_naive / fwd:12.0f} {1.0:6.2f}x")
    print(f"{'fast (frozen context, JVPs, batched)':<44} {t_fast:8.2f}s {t_fast / fwd:12.0f} "
          f"{t_naive / t_fast:6.2f}x")
    print("\nlargest difference fast - naive (relative to the curve's max |value|):")
    for key in ("predicted", "measured", "exact"):
        a, b = fast[key].double(), naive[key].double()
        print(f"  {key:<10} {float((a - b).abs().max() / b.abs().max()):.2e}")
    print(f"  predicted vs exact (fast): {float((fast['predicted'] - fast['exact']).abs().max() / fast['exact'].abs().max()):.2e}"
          f"  (order {args.order} > {L} layers: the prompt's own Krylov basis is exact up to rounding)")
    diffs = {key: float((fast[key].double() - naive[key].double()).abs().max() / naive[key].double().abs().max())
             for key in ("predicted", "measured", "exact")}
    add_row(args.summary, "gains", f"one prompt's gain analysis ({args.tokens} tokens, order {args.order}, "
            f"{L} layers)", f"random GPT-2 d={d}, {L} layers, {args.heads} heads", args.device,
            f"{seconds(t_fast)} = {t_fast / fwd:.0f} forwards", f"{seconds(t_naive)} = {t_naive / fwd:.0f} forwards "
            "(full-sequence Jacobians + a forward per layer)", t_naive / t_fast,
            f"within {diffs['predicted']:.1e} ({diffs['measured']:.1e} measured, {diffs['exact']:.1e} exact)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
