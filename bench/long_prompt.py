"""Benchmark: every token's top-k spectrum of a long prompt, streamed against the formed and per-token paths.

One process, one random Llama-style model (weight spectra shaped to decay like a trained model's,
``--decay``), one prompt of ``--tokens`` random ids; for the last token's output after the final norm,
the top ``k`` singular triplets of every ``J_i``:

* **ours, streamed** (:func:`lldd_core.linalg.streamed.topk_svd_streamed`, the analyses' tolerance
  and oversampling): passes of ``d`` VJPs over row blocks, memory ``O(T d l)``;
* **full**: the formed ``T x d x d`` Jacobian (chunked batched VJPs, ``d`` products) and the top-k of
  every formed matrix to ``1e-6`` — the accuracy reference, and the memory baseline;
* **per-token matrix-free** (:func:`lldd_core.linalg.spectral.topk_svd`, whose per-token products each
  cost a full pass over the prompt): run on ``--baseline-positions`` evenly spaced positions and
  extrapolated linearly to all ``T`` (its products and time per position do not depend on how many
  positions share the run, beyond the shared sketch, which is not scaled); labelled as such.

Per path: wall time (forward included), peak memory above the model (resident memory, ``VmHWM`` reset
through ``/proc/self/clear_refs``; the CUDA allocator's peak on a GPU), products, and the largest
relative error of the top-k singular values against the full path.

    python bench/long_prompt.py                               # T = 512, d = 1024, 2 blocks (CPU, ~15 min on 2 cores)
    python bench/long_prompt.py --tokens 128                  # a quick look
    python bench/long_prompt.py --device cuda --tokens 2048 --hidden 2048 --layers 16 --heads 32 --kv-heads 8 \\
        --intermediate 8192 --no-full --baseline-positions 0  # the Llama-3.2-1B-shaped GPU target
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_run_options, bench_parser, sync
from spectral import peak_mib_during, random_model
from summary import add_row, seconds

from lldd_core.analysis.spectrum import DEFAULT_OVERSAMPLE, DEFAULT_TOL
from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.linalg.spectral import SKETCH_FACTOR, svd_full, topk_svd
from lldd_core.linalg.streamed import topk_svd_streamed
from lldd_core.models.arch import adapter_for

#: Target of the CPU run (issue 21): T = 512 at d = 1024 within this much peak memory above the model.
CPU_TARGET_GIB = 4.0
#: Hutchinson probes of :func:`lldd_core.linalg.spectral.topk_svd_krylov` (its default).
PROBES = 16


def parse_args(argv: list[str] | None = None):
    p = bench_parser(__doc__)
    p.add_argument("--tokens", type=int, default=512, help="prompt length T")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None, help="None: half the heads")
    p.add_argument("--intermediate", type=int, default=None, help="None: 2.6875 * hidden, rounded to 64")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--decay", type=float, default=1.0, help="weight spectrum exponent (0: raw random init)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help="residual tolerance (rel. to s1) of both our paths")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16"))
    p.add_argument("--matmul-precision", default="highest", choices=("highest", "high"),
                   help="torch.set_float32_matmul_precision: 'high' lets a GPU use TF32 (10-bit mantissa) products")
    p.add_argument("--no-full", action="store_true", help="skip the formed T x d x d path (when it cannot fit)")
    p.add_argument("--baseline-positions", type=int, default=8,
                   help="positions the per-token matrix-free baseline runs on (0: skip it)")
    add_run_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    dtype = getattr(torch, args.dtype)
    model = random_model(args.hidden, args.layers, args.heads, args.vocab, args.decay, args.seed,
                         intermediate=args.intermediate, kv_heads=args.kv_heads, device=args.device,
                         shaping="qr").to(dtype)
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, args.tokens)
    adapter = adapter_for("llama")
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(args.device)
    T, d, k = args.tokens, args.hidden, args.k
    where = f"{args.device}, {args.threads} threads" if args.device == "cpu" else args.device
    tf32 = ", TF32 products" if args.matmul_precision == "high" and args.device != "cpu" else ""
    label = f"Llama-style d={d}, {args.layers} blocks, T={T}, {args.dtype}{tf32}"
    print(f"{label}, top {k}, tol {args.tol:g}, decay {args.decay} ({where}); the formed J would be "
          f"{T * d * d * torch.empty((), dtype=dtype).element_size() / 2**30:.2f} GiB")
    results: dict[str, dict] = {}

    def run(name: str, fn) -> None:
        box: dict = {}

        def body() -> None:
            sync()
            t0 = time.perf_counter()
            box["out"] = fn()
            sync()
            box["s"] = time.perf_counter() - t0

        peak = peak_mib_during(body, args.device)
        results[name] = {"s": box["s"], "peak_mib": peak, **box["out"]}
        print(f"  {name:<24} {box['s']:9.1f} s   peak {peak / 1024:6.2f} GiB above the model   "
              f"{results[name]['products']:>7,} products   {results[name].get('note', '')}", flush=True)

    def streamed() -> dict:
        op = jacobian_operator(model, adapter, ids)
        out = topk_svd_streamed(op, k, tol=args.tol, oversample=DEFAULT_OVERSAMPLE)
        return {"S": out.svd.S.double().cpu(), "products": out.svd.n_products,
                "note": f"{out.passes} passes, max residual {float(out.svd.residual.max()):.1e}"}

    def full() -> dict:
        op = jacobian_operator(model, adapter, ids)
        J = op.full().J
        out = svd_full(J, k, tol=1e-6)
        return {"S": out.S.double().cpu(), "products": d, "note": f"max residual {float(out.residual.max()):.1e}"}

    positions = []
    if args.baseline_positions > 0:
        n = min(args.baseline_positions, T)
        positions = sorted({round(i * (T - 1) / max(1, n - 1)) for i in range(n)})

    def per_token() -> dict:
        op = jacobian_operator(model, adapter, ids).at(positions)
        # shared=False: at all T positions its shared phase would not fit (T * d * d images), so neither here
        out = topk_svd(op, k, tol=args.tol, oversample=DEFAULT_OVERSAMPLE, shared=False)
        return {"S": out.S.double().cpu(), "products": out.n_products,
                "note": f"{len(positions)} positions, max residual {float(out.residual.max()):.1e}"}

    run("ours, streamed", streamed)
    if not args.no_full:
        run("full (formed T x d x d)", full)
    if positions:
        run("per-token matrix-free", per_token)

    ours = results["ours, streamed"]
    ref = results.get("full (formed T x d x d)")
    print()
    if ref is not None:
        err = float(((ours["S"] - ref["S"]).abs() / ref["S"]).max())
        err1 = float(((ours["S"] - ref["S"]).abs() / ref["S"][:, :1]).max())
        print(f"  streamed against full: max rel. error of the top-{k} singular values {err:.1e} ({err1:.1e} of σ1); "
              f"time {ours['s'] / ref['s']:.2f}x the full path's, peak memory {ours['peak_mib'] / ref['peak_mib']:.2f}x")
        add_row(args.summary, "long_prompt", f"top-{k} of every J_i, T={T}: peak memory", label, args.device,
                f"{ours['peak_mib'] / 1024:.2f} GiB", f"{ref['peak_mib'] / 1024:.2f} GiB (formed J)",
                ref["peak_mib"] / ours["peak_mib"], f"σ max rel. diff {err:.1e}")
    base = results.get("per-token matrix-free")
    if base is not None:
        # the shared sketch and probes serve every position; the rest is per position
        l = min(k + DEFAULT_OVERSAMPLE, d)
        shared = (min(d, SKETCH_FACTOR * l) if len(positions) >= 4 else l) + PROBES
        est_products = round(shared + (base["products"] - shared) * T / len(positions))
        est_s = base["s"] * est_products / base["products"]  # each product a full pass over the prompt
        err = float(((ours["S"][positions] - base["S"]).abs() / base["S"]).max())
        if ref is not None:
            base_err = float(((base["S"] - ref["S"][positions]).abs() / ref["S"][positions]).max())
            print(f"  per-token matrix-free against full on its {len(positions)} positions: max rel. error {base_err:.1e}")
        print(f"  per-token matrix-free extrapolated to all {T} positions: ~{est_s:,.0f} s, ~{est_products:,} products "
              f"-> streamed is {est_s / ours['s']:.1f}x faster, {est_products / ours['products']:.1f}x fewer products "
              f"(σ on the shared positions: max rel. diff {err:.1e})")
        add_row(args.summary, "long_prompt", f"top-{k} of every J_i, T={T}: time", label, args.device,
                seconds(ours["s"]), f"~{seconds(est_s)} (per-token, extrapolated)", est_s / ours["s"],
                f"σ max rel. diff {err:.1e}")
    if args.device == "cpu":
        ok = ours["peak_mib"] / 1024 <= CPU_TARGET_GIB
        print(f"  target: T=512 at d=1024 within {CPU_TARGET_GIB:g} GiB above the model -> "
              f"{ours['peak_mib'] / 1024:.2f} GiB here ({'met' if ok else 'NOT met'} at this size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
