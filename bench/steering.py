"""Benchmark: the per-token cost of steered generation against unsteered generation.

One random GPT-2 (default 12 layers, d = 768), one prompt, greedy generation of ``--tokens`` new
tokens with the KV cache, in one process:

* unsteered ``model.generate``;
* additive steering (``α v_l`` at one layer, last position) and an LLV schedule (``u_l v_l`` at
  every layer) — the issue's bound: at most **1.5x** unsteered per token;
* LQR feedback at every layer (``u_k = (β_k - v_k^T x_k) K_k v_k``; the gains come from a
  Riccati pass done before generation, so no Jacobian is formed in the loop) — the bound: its
  per-token overhead over unsteered is hook overhead, at most :data:`LQR_BOUND_MS` ms per token
  (one dot product and one precomputed vector per layer, ~1 ms/token at 12 layers), a fixed time and
  not a multiple of the machine's matrix-vector time; ``L`` ``d x d`` matrix-vector products are timed
  alongside for scale.

Each configuration is timed ``--repeats`` times in alternation (medians reported).

    python bench/steering.py
    python bench/steering.py --layers 4 --hidden 256 --tokens 32

``--summary FILE`` appends the result rows of ``bench/gpu.sh``'s table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_gpt2_shape, add_run_options, bench_parser
from summary import add_row, seconds  # bench/summary.py: this folder is sys.path[0] for a bench
from transformers import GPT2Config, GPT2LMHeadModel

from lldd_core.forward.interventions import AddVectors, LQRFeedback, intervene
from lldd_core.linalg.lqr import riccati_gains
from lldd_core.models.arch import adapter_for

#: LQR feedback's bound: per-token overhead over unsteered generation, in ms (hook overhead: a dot product
#: and one precomputed vector per layer; measured 1.19 ms at 12 layers on 2 idle CPU cores).
LQR_BOUND_MS = 2.0

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    add_gpt2_shape(p)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=5)
    add_run_options(p, device="cuda" if torch.cuda.is_available() else "cpu", seed=False)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, vocab_size=args.vocab,
                        n_positions=args.prompt_tokens + args.tokens + 8, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(config).eval().to(device)
    adapter = adapter_for(model.config.model_type)
    L, d = args.layers, args.hidden
    ids = torch.randint(0, args.vocab, (1, args.prompt_tokens), device=device)
    mask = torch.ones_like(ids)
    V = torch.nn.functional.normalize(torch.randn(L + 1, d, device=device), dim=-1)
    # LQR gains from random stable dynamics, computed before generation (float64, CPU)
    A = [torch.eye(d, dtype=torch.float64) + 0.05 * torch.randn(d, d, dtype=torch.float64) / d ** 0.5 for _ in range(L)]
    K = riccati_gains(A, 10.0, 10.0, 1.0)
    Kv = torch.einsum("kij,kj->ki", K, V[:L].double().cpu()).float().to(device)
    configs = {
        "unsteered": list,
        "additive (1 layer)": lambda: [AddVectors({2 * L // 3: 4.0 * V[2 * L // 3]})],
        "llv schedule (all layers)": lambda: [AddVectors({l: 0.5 * V[l] for l in range(L)})],
        "lqr (all layers)": lambda: [LQRFeedback(V[:L], torch.ones(L, device=device), Kv)],
    }

    def run(make) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), intervene(model, adapter, make(), attention_mask=mask):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                 do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + args.tokens
        return (time.perf_counter() - t0) / args.tokens

    for make in configs.values():  # warm up
        run(make)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, make in configs.items():
            times[name].append(run(make))
    per_token = {name: statistics.median(ts) for name, ts in times.items()}

    Kd = K.float().to(device)
    x = torch.randn(d, device=device)
    for _ in range(3):
        [Kd[k] @ x for k in range(L)]
    mv = []
    for _ in range(20):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(L):
            Kd[k] @ x
        if device.type == "cuda":
            torch.cuda.synchronize()
        mv.append(time.perf_counter() - t0)
    matvecs = statistics.median(mv)

    base = per_token["unsteered"]
    print(f"random GPT-2: {L} layers, d = {d}, prompt {args.prompt_tokens} tokens, {args.tokens} new tokens, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"\n{'generation':<28} {'ms/token':>9} {'ratio':>7}")
    for name, t in per_token.items():
        print(f"{name:<28} {t * 1e3:9.2f} {t / base:6.2f}x")
    worst = max(per_token["additive (1 layer)"], per_token["llv schedule (all layers)"]) / base
    print(f"\nadditive / LLV: worst ratio {worst:.2f}x (bound 1.5x)")
    overhead = per_token["lqr (all layers)"] - base
    print(f"LQR overhead per token {overhead * 1e3:.3f} ms (bound {LQR_BOUND_MS:g} ms/token of hook overhead: "
          f"{'met' if overhead * 1e3 <= LQR_BOUND_MS else 'NOT met'}); for scale, {L} d x d matrix-vector products "
          f"take {matvecs * 1e3:.3f} ms")
    model_label = f"random GPT-2 d={d}, {L} layers, {args.heads} heads"
    checks = {"additive (1 layer)": "bound 1.5x", "llv schedule (all layers)": "bound 1.5x",
              "lqr (all layers)": f"overhead {overhead * 1e3:.2f} ms/token (bound {LQR_BOUND_MS:g} ms/token)"}
    for name, check in checks.items():
        add_row(args.summary, "steering", f"steered generation per token: {name}, {args.tokens} new tokens",
                model_label, args.device, f"{seconds(per_token[name])} / token", f"{seconds(base)} / token unsteered",
                per_token[name] / base, check, ratio_kind="steered / unsteered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
