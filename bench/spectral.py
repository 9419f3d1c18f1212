"""Benchmark: top-k spectra of the detached Jacobian, ours against the reference pipeline.

Three parts, all in one process on the same model and prompt:

1. **Per-token top-k** of an ``T``-token prompt (default 8 tokens, k = 8):
   * reference: the full Jacobian by ``torch.autograd.functional.jacobian(fn, x0, vectorize=True,
     strategy="reverse-mode")`` through the linearized model, then a randomized SVD per token
     (``torch.svd_lowrank`` with ``k + 10`` columns and 7 power iterations, like scikit-learn's
     ``randomized_svd`` defaults that the public reference uses);
   * ours, matrix-free: :func:`lldd_core.linalg.spectral.topk_svd` on the operator of one recorded
     forward (shared sketch, batched products, residual-checked), reverse-over-reverse products and,
     separately, forward-mode (vmapped JVP) products;
   * ours, full: the chunked batched-VJP Jacobian and an exact SVD.
   Singular values are compared with the exact SVD of the reference's Jacobian (relative error of
   each of the top ``k``).
2. **All-layer cumulative spectra** (``x_0 -> x_k`` through the final norm, every ``k``): the
   reference recomputes each layer from scratch (forward to layer ``k``, full Jacobian, randomized
   SVD); ours records one forward (:func:`lldd_core.forward.views.record_views`) and runs the automatic
   method per layer.
3. **Peak memory** of the matrix-free path against the full one for growing ``d`` (and ``k``):
   peak resident memory above the level before the call (Linux ``VmHWM`` reset through
   ``/proc/self/clear_refs``; CUDA peak allocator statistics on a GPU).

Random models have flat spectra (``σ9/σ1 ≈ 0.8``), the hardest case for any randomized method and
unlike trained models, whose detached Jacobians decay fast. ``--decay`` (default 1.0) therefore
reshapes every block weight to singular values ``∝ (j+1)^-decay`` (Frobenius norm kept) and gives
the norm weights a heavy tail, and the script prints the decay it got (``σ8/σ1``, ``σ16/σ1``);
``--decay 0`` keeps the raw random model.

    python bench/spectral.py                      # d = 2048, 2 layers, 8 tokens (several minutes on 2 cores)
    python bench/spectral.py --hidden 1024 --layers 4
    python bench/spectral.py --demo gpt2-large    # the largest demo model instead (built if missing)
    python bench/spectral.py --parts 3            # memory scaling only

``--device cuda`` builds the models on the GPU, synchronizes around every timed call and measures
part 3 with the CUDA allocator's peak; ``--shaping qr`` gives the weights their decaying spectra
from QR-orthonormal random factors instead of an SVD of each weight (the same distribution of
singular vectors, a fraction of the cost: what makes ``--decay`` affordable at real size).
``--summary FILE`` appends the result rows of ``bench/gpu.sh``'s table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import sync
from summary import add_row, seconds  # bench/summary.py: this folder is sys.path[0] for a bench
from transformers import LlamaConfig, LlamaForCausalLM

from lldd_core.analysis.spectrum import run_svd
from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.forward.linearize import detached_mode
from lldd_core.forward.residual import run_to_layer
from lldd_core.forward.views import record_views
from lldd_core.linalg.spectral import choose_method, svd_full, topk_svd
from lldd_core.models.arch import adapter_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048, help="hidden size d of the random Llama-style model")
    p.add_argument("--layers", type=int, default=2, help="decoder blocks")
    p.add_argument("--heads", type=int, default=16, help="attention heads")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads; None: half the heads")
    p.add_argument("--intermediate", type=int, default=None,
                   help="MLP size; None: 2.6875 * hidden rounded to a multiple of 64")
    p.add_argument("--vocab", type=int, default=8000, help="vocabulary size (does not enter the Jacobian)")
    p.add_argument("--demo", default=None, help="use this demo model (e.g. gpt2-large) instead of a random one")
    p.add_argument("--tokens", type=int, default=8, help="prompt length T")
    p.add_argument("--k", type=int, default=8, help="singular triplets per token")
    p.add_argument("--tol", type=float, default=1e-3, help="residual tolerance of the matrix-free path (rel. to s1)")
    p.add_argument("--fast-tol", type=float, default=1e-2,
                   help="looser tolerance of the second matrix-free row (with --fast-oversample)")
    p.add_argument("--fast-oversample", type=int, default=4)
    p.add_argument("--decay", type=float, default=1.0, help="weight spectrum exponent (0: raw random init)")
    p.add_argument("--shaping", choices=("svd", "qr"), default="svd",
                   help="how --decay reshapes the weights: SVD of each weight, or QR-orthonormal random factors")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing")
    p.add_argument("--parts", default="1,2,3", help="which parts to run (comma-separated)")
    p.add_argument("--mem-hidden", default="512,1024,2048", help="hidden sizes of the memory part")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the models are built on it)")
    p.add_argument("--summary", metavar="FILE", default=None, help="append the result rows for bench/gpu.sh's table")
    return p.parse_args(argv)


# --- models ----------------------------------------------------------------------------------


def _haar_columns(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """``cols`` orthonormal columns distributed like a Gaussian matrix's singular vectors (QR, signs fixed)."""
    Q, R = torch.linalg.qr(torch.randn(rows, cols, generator=gen, device=gen.device))
    return Q * torch.sign(torch.diagonal(R))


def random_model(hidden: int, layers: int, heads: int, vocab: int, decay: float, seed: int, *,
                 intermediate: int | None = None, kv_heads: int | None = None, device: str = "cpu",
                 shaping: str = "svd") -> LlamaForCausalLM:
    """A random Llama-style model; with ``decay > 0`` its weight spectra decay like a trained model's."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                         intermediate_size=intermediate or round(hidden * 2.6875 / 64) * 64,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads or max(1, heads // 2),
                         max_position_embeddings=2048, initializer_range=0.02, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):  # initialized where it runs: a real-size model never passes through the CPU
        model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    factors = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                # trained norms have a few large gains (outlier dimensions): a heavy tail
                tail = torch.randn(param.shape, generator=gen).abs() ** 3 if decay > 0 else torch.zeros(param.shape)
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen) + decay * tail)
            elif decay > 0 and param.ndim == 2 and ".layers." in name:
                if shaping == "svd":
                    U, S, Vh = torch.linalg.svd(param, full_matrices=False)
                    norm = S.norm()
                else:
                    r = min(param.shape)
                    U, Vh = _haar_columns(param.shape[0], r, factors), _haar_columns(param.shape[1], r, factors).T
                    norm = param.norm()  # Frobenius = the norm of the singular values
                shaped = (torch.arange(Vh.shape[0], dtype=param.dtype, device=param.device) + 1) ** -decay
                shaped *= norm / shaped.norm()
                param.copy_((U * shaped) @ Vh)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def demo_model(name: str, device: str = "cpu"):
    from lldd_core.models.loading import ModelSpec, load_model, resolve_model

    handle = load_model(resolve_model(ModelSpec(f"demo:{name}", device=device)))
    for p in handle.model.parameters():
        p.requires_grad_(False)
    return handle.model


# --- helpers ---------------------------------------------------------------------------------


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones (first-call costs)."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def rel_errors(S: torch.Tensor, exact: torch.Tensor) -> float:
    k = S.shape[1]
    return float(((S.double() - exact[:, :k].double()).abs() / exact[:, :k].double()).max())


def reference_layer_fn(model, adapter, ids, layer: int):
    """The reference's forward to layer ``k`` (its ``model_forward(lsplit=k)``) + final norm, last token."""
    norm = adapter.final_norm(model)

    def fn(x0: torch.Tensor) -> torch.Tensor:
        return norm(run_to_layer(model, adapter, ids[None], layer, x0=x0).xk)[0, -1]

    return fn


def reference_spectra(model, adapter, ids, layer: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full Jacobian by autograd.functional.jacobian(vectorize=True), then randomized SVD per token."""
    with detached_mode(model, adapter), torch.enable_grad():
        x0 = run_to_layer(model, adapter, ids[None], 1).x0.detach()
        J = torch.autograd.functional.jacobian(reference_layer_fn(model, adapter, ids, layer), x0, vectorize=True,
                                               strategy="reverse-mode")[:, 0]  # [d_out, T, d_in]
    J = J.permute(1, 0, 2)
    S = torch.stack([torch.svd_lowrank(J[i], q=min(k + 10, J.shape[-1]), niter=7)[1][:k] for i in range(J.shape[0])])
    return S, J


def peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_mib_during(fn: Callable[[], object], device: str = "cpu") -> float:
    """Peak memory above the level before ``fn`` (MiB): resident memory on a CPU, the CUDA allocator's on a GPU."""
    import ctypes
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:  # hand freed heap back to the OS, so the peak counts every byte fn allocates
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    peak_reset()
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


# --- parts -----------------------------------------------------------------------------------


def part_topk(model, adapter, ids, args) -> None:
    L = len(adapter.layers(model))
    d = model.config.hidden_size
    T, k = len(ids), args.k
    print(f"\n[1] top-{k} spectra of every token, T={T}, d={d}, {L} blocks")
    t_ref, (S_ref, J) = timed(lambda: reference_spectra(model, adapter, ids, L, k), args.repeats, args.warmup)
    exact = torch.linalg.svdvals(J.double())
    decay8 = statistics.median((exact[:, min(k, d) - 1] / exact[:, 0]).tolist())
    decay16 = statistics.median((exact[:, min(2 * k, d) - 1] / exact[:, 0]).tolist())
    print(f"    spectrum decay (median over tokens): s{k}/s1 = {decay8:.3f}, s{2 * k}/s1 = {decay16:.3f}")

    def ours(products: str, tol: float = args.tol, oversample: int = 8, scheme: str = "krylov"):
        op = jacobian_operator(model, adapter, ids)
        return topk_svd(op, k, tol=tol, products=products, iters=30, oversample=oversample, scheme=scheme)

    def ours_full():
        op = jacobian_operator(model, adapter, ids)
        return svd_full(op.full().J, k)

    rows = [("reference: autograd jacobian + randomized SVD", t_ref, rel_errors(S_ref, exact), d, "")]
    kept: dict = {}
    fast = f"tol {args.fast_tol:g}, oversample {args.fast_oversample}: the analyses' default"
    for label, fn in [(f"ours matrix-free (tol {args.tol:g}, oversample 8)", lambda: ours("reverse")),
                      (f"ours matrix-free ({fast})", lambda: ours("reverse", args.fast_tol, args.fast_oversample)),
                      ("  same, scheme mixed (opt-in: shared output basis)",
                       lambda: ours("reverse", args.fast_tol, args.fast_oversample, "mixed")),
                      ("  same with forward-mode JVP products", lambda: ours("forward", args.fast_tol,
                                                                          args.fast_oversample)),
                      ("ours full (batched VJPs + top-k of formed J)", ours_full)]:
        t, svd = timed(fn, args.repeats, args.warmup)
        note = "" if svd.method == "full" else f"max residual {float(svd.residual.max()):.1e}"
        rows.append((label, t, rel_errors(svd.S, exact), svd.n_products or d, note))
        kept[label] = svd
    print(f"    auto would choose: {choose_method(d, T, k)}")
    print(f"    {'method':<52} {'time s':>8} {'ratio':>7} {'max rel err':>12} {'products':>9}")
    for label, t, err, n, note in rows:
        print(f"    {label:<52} {t:8.2f} {t_ref / t:6.2f}x {err:12.1e} {n:9d}  {note}")
    old, new = kept[rows[2][0]], kept[rows[3][0]]
    print(f"    scheme mixed against the default (krylov): {new.n_products} / {old.n_products} products "
          f"({new.n_products / old.n_products:.2f}), time ratio {rows[2][1] / rows[3][1]:.2f}x, max |Δσ| / σ1 "
          f"{float(((new.S - old.S).abs() / old.S[:, :1]).max()):.1e} (max residuals {float(new.residual.max()):.1e}, "
          f"{float(old.residual.max()):.1e})")
    short = [f"matrix-free, the analyses' default (tol {args.fast_tol:g})", "matrix-free, scheme mixed (opt-in)",
             "matrix-free, forward-mode JVP products", "full Jacobian + exact top-k"]
    for label, (_, t, err, n, _) in zip(short, rows[2:]):
        add_row(args.summary, "spectral", f"top-{k} spectra of {T} tokens: {label}", args.model_label,
                args.device, f"{seconds(t)}, {n} products", f"{seconds(t_ref)}, {d} products (autograd + randomized SVD)",
                t_ref / t, f"σ within {err:.1e} (reference {rows[0][2]:.1e})")


def part_layers(model, adapter, ids, args) -> None:
    L = len(adapter.layers(model))
    d, T, k = model.config.hidden_size, len(ids), args.k
    print(f"\n[2] all-layer cumulative spectra (final norm applied), T={T}, d={d}, {L} blocks")

    def reference():
        return [reference_spectra(model, adapter, ids, layer, k) for layer in range(1, L + 1)]

    def ours(tol: float, oversample: int):
        rec = record_views(model, adapter, ids, sites=["cumulative"], forward_products=False)
        return [run_svd(rec.operators[("cumulative", layer)], k, "auto", tol=tol, oversample=oversample).S
                for layer in range(1, L + 1)]

    t_ref, ref = timed(reference, args.repeats, args.warmup)
    exact = [torch.linalg.svdvals(J.double()) for _, J in ref]
    err_ref = max(rel_errors(S, ex) for (S, _), ex in zip(ref, exact))
    print(f"    reference (recompute every layer): {t_ref:.2f} s, max rel err of singular values {err_ref:.1e}")
    method = choose_method(d, T, k)
    for tol, oversample in [(args.tol, 8), (args.fast_tol, args.fast_oversample)]:
        t_ours, S_ours = timed(lambda tol=tol, oversample=oversample: ours(tol, oversample), args.repeats, args.warmup)
        err = max(rel_errors(S, ex) for S, ex in zip(S_ours, exact))
        print(f"    ours (one forward, {method}, tol {tol:g}, oversample {oversample}): {t_ours:.2f} s, ratio "
              f"{t_ref / t_ours:.2f}x, max rel err {err:.1e}")
    add_row(args.summary, "spectral", f"all-layer cumulative top-{k} spectra, {T} tokens (tol {tol:g}: the default)",
            args.model_label, args.device, seconds(t_ours), f"{seconds(t_ref)} (every layer from scratch)",
            t_ref / t_ours, f"σ within {err:.1e} (reference {err_ref:.1e})")


def part_memory(args) -> None:
    print(f"\n[3] peak memory above the model (MiB), T={args.tokens}; matrix-free grows ~ T·d·k, full ~ T·d²")
    print(f"    {'d':>6} {'k':>4} {'matrix-free':>12} {'full':>10} {'T·d² floats (MiB)':>18}")
    largest, reported = int(args.mem_hidden.split(",")[-1]), False
    for hidden in [int(h) for h in args.mem_hidden.split(",")]:
        model = random_model(hidden, 1, max(1, hidden // 128), 1000, args.decay, args.seed, device=args.device,
                             shaping=args.shaping)
        adapter = adapter_for("llama")
        ids = torch.randint(0, 1000, (args.tokens,), generator=torch.Generator().manual_seed(args.seed)).to(args.device)
        for k in (4, args.k, 2 * args.k) if hidden == largest else (args.k,):
            op = jacobian_operator(model, adapter, ids)
            mf = peak_mib_during(lambda op=op, k=k: topk_svd(op, k, tol=args.tol, iters=2), args.device)
            op = jacobian_operator(model, adapter, ids)
            full = peak_mib_during(lambda op=op, k=k: svd_full(op.full().J, k), args.device)
            dense = args.tokens * hidden * hidden * 4 / 2**20
            print(f"    {hidden:>6} {k:>4} {mf:12.1f} {full:10.1f} {dense:18.1f}")
            if hidden == largest and k == args.k and not reported:
                reported = True
                add_row(args.summary, "spectral", f"peak memory of top-{k} spectra, {args.tokens} tokens",
                        f"random Llama d={hidden}, 1 layer", args.device, f"{mf:.3g} MiB (matrix-free)",
                        f"{full:.3g} MiB (full Jacobian)", full / mf if mf > 0 else None, ratio_kind="full / ours")
        del model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = {int(p) for p in args.parts.split(",")}
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {args.device}")
    if parts & {1, 2}:
        if args.demo:
            model = demo_model(args.demo, args.device)
            adapter = adapter_for(model.config.model_type)
            print(f"model: demo:{args.demo} (d={model.config.hidden_size}, {len(adapter.layers(model))} blocks, trained)")
            args.model_label = f"demo:{args.demo} (trained)"
        else:
            t0 = time.perf_counter()
            model = random_model(args.hidden, args.layers, args.heads, args.vocab, args.decay, args.seed,
                                 intermediate=args.intermediate, kv_heads=args.kv_heads, device=args.device,
                                 shaping=args.shaping)
            adapter = adapter_for("llama")
            c = model.config
            print(f"model: random Llama-style d={args.hidden}, {args.layers} blocks, MLP {c.intermediate_size}, "
                  f"{c.num_attention_heads}/{c.num_key_value_heads} heads, decay {args.decay} ({args.shaping}), "
                  f"{args.device} (built in {time.perf_counter() - t0:.0f} s)")
            args.model_label = (f"random Llama d={args.hidden}, {args.layers} layers, MLP {c.intermediate_size}, "
                                f"{c.num_attention_heads}/{c.num_key_value_heads} heads, decay {args.decay:g}")
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(args.seed)).to(args.device)
        if 1 in parts:
            part_topk(model, adapter, ids, args)
        if 2 in parts:
            part_layers(model, adapter, ids, args)
        del model
    if 3 in parts:
        part_memory(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
