"""Benchmark: our full detached Jacobian against the reference implementation's approach.

Both run in one process on the same random Llama-style model and the same prompt:

* ours: ``jacobian_operator(model, adapter, ids).full()`` (one forward that stops after the last
  block, then chunked batched VJPs with ``torch.autograd.grad(is_grads_batched=True)``);
* reference: ``torch.autograd.functional.jacobian(fn, embeds, vectorize=True,
  strategy="reverse-mode")`` through the same linearized model (inside ``detached_mode``), where
  ``fn`` runs the whole causal LM on ``inputs_embeds`` and returns the last position of the
  final-normed last hidden state, as the public reference does.

For Llama ``x_0`` is ``inputs_embeds``, so the two Jacobians are directly comparable. The script
prints the median (and minimum) time of each method, the speed ratio, the largest difference between the two
Jacobians and our reconstruction error, and exits non-zero when the Jacobians disagree by more
than the dtype's tolerance. Run from the repository root: ``python bench/jacobian.py --help``.
``--device cuda`` builds the model on the GPU and synchronizes around every timed call
(``bench/gpu.sh`` runs it at real size); ``--summary FILE`` appends the result row of its table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_llama_shape, add_run_options, bench_parser, sync
from summary import add_row, seconds  # bench/summary.py: this folder is sys.path[0] for a bench
from transformers import LlamaConfig, LlamaForCausalLM

from lldd_core.forward.hooks import capture, hooks
from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error
from lldd_core.forward.linearize import detached_mode
from lldd_core.models.arch import adapter_for

#: Largest accepted max|J_ours - J_ref| / max|J_ref| per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    add_llama_shape(p, layers=4, tokens=16)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (after one warm-up each)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--chunk", type=int, default=None,
                   help="cotangents per batched VJP for ours; None: JacobianOperator.chunk_size()")
    add_run_options(p)
    return p.parse_args(argv)


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> LlamaForCausalLM:
    intermediate = args.intermediate or round(args.hidden * 2.6875)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or max(1, args.heads // 2),
        max_position_embeddings=max(2048, args.tokens),
        initializer_range=0.02,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # initialized where it runs: a real-size model never passes through the CPU
        model = LlamaForCausalLM(config)
    with torch.no_grad():  # norm weights are all ones after init: make them generic
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    return model.to(dtype).eval()


def final_normed_is_tied(model: LlamaForCausalLM, ids: torch.Tensor) -> bool:
    """True when ``hidden_states[-1]`` is the decoder's output after its final norm (transformers 5.x: yes)."""
    captured: dict[str, torch.Tensor] = {}

    with torch.no_grad(), hooks(capture(model.model.layers[-1], captured, "pre")):
        out = model.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    normed = model.model.norm(captured["pre"])
    return torch.equal(out.hidden_states[-1], out.last_hidden_state) and torch.allclose(out.hidden_states[-1], normed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    model = build_model(args, dtype)
    adapter = adapter_for(model.config.model_type)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab, (1, args.tokens), generator=gen).to(args.device)
    embeds = model.get_input_embeddings()(ids).detach()  # [1, T, d]

    tied = final_normed_is_tied(model, ids)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if tied:  # the reference: out.hidden_states[-1][0, -1] of the causal LM (logits computed too)
            out = model(inputs_embeds=x, output_hidden_states=True, use_cache=False)
            return out.hidden_states[-1][0, -1]
        return model.model(inputs_embeds=x, use_cache=False).last_hidden_state[0, -1]

    def run_ours():
        op = jacobian_operator(model, adapter, ids)
        return op, op.full(chunk=args.chunk)

    def run_ref() -> torch.Tensor:
        with detached_mode(model, adapter), torch.enable_grad():
            return torch.autograd.functional.jacobian(fn, embeds, vectorize=True, strategy="reverse-mode")

    # warm-up (also the results that are compared)
    op, full = run_ours()
    J_ref_raw = run_ref()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        sync()
        t0 = time.perf_counter()
        run_ours()
        sync()
        times["ours"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_ref()
        sync()
        times["reference"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    J = full.J.detach()  # [T, d_out, d_in]
    assert J_ref_raw.shape == (args.hidden, 1, args.tokens, args.hidden), J_ref_raw.shape
    J_ref = J_ref_raw[:, 0].permute(1, 0, 2)  # [d_out, 1, T, d_in] -> [T, d_out, d_in]
    diff = (J - J_ref).abs().max().item()
    scale = J_ref.abs().max().item()
    rel_max = diff / scale
    rel_fro = (torch.linalg.vector_norm((J - J_ref).double()) / torch.linalg.vector_norm(J_ref.double())).item()

    with torch.no_grad(), detached_mode(model, adapter):
        y_ref = fn(embeds)
    x0_same = torch.equal(op.x0, embeds[0])
    rec_ours = relative_error(op.y, reconstruct(J, op.x0, full.b))
    rec_ref = relative_error(y_ref, torch.einsum("tod,td->o", J_ref, embeds[0]))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random Llama, d={args.hidden}, intermediate={model.config.intermediate_size}, "
          f"layers={args.layers}, heads={args.heads}/{model.config.num_key_value_heads} kv, vocab={args.vocab}, "
          f"{n_params / 1e6:.1f}M params, {args.dtype}, {args.device}")
    print(f"prompt: {args.tokens} random tokens; torch {torch.__version__}, threads={torch.get_num_threads()}; "
          f"repeats={args.repeats} (+1 warm-up)")
    print(f"ours: chunk={args.chunk or op.chunk_size()} cotangents per batched VJP (d_out={op.d_out}); "
          f"reference output: {'hidden_states[-1] (after final norm)' if tied else 'decoder last_hidden_state'}")
    print()
    print(f"{'method':<42} {'median s':>9} {'min s':>7}   runs")
    labels = {"ours": "ours: jacobian_operator(...).full()", "reference": "reference: autograd.functional.jacobian"}
    for key, label in labels.items():
        runs = " ".join(f"{t:.3f}" for t in times[key])
        print(f"{label:<42} {med[key]:>9.3f} {min(times[key]):>7.3f}   {runs}")
    print()
    print(f"speed ratio (reference / ours): {med['reference'] / med['ours']:.2f}x   "
          f"(on the minima: {min(times['reference']) / min(times['ours']):.2f}x)")
    print(f"max |J_ours - J_ref|: {diff:.3e}   (max |J_ref| = {scale:.3e})")
    print(f"relative difference: max {rel_max:.3e}, Frobenius {rel_fro:.3e}   (tolerance {TOLERANCE[dtype]:.0e})")
    print(f"|y_ours - y_ref|_max: {(op.y.detach() - y_ref).abs().max().item():.3e}; x_0 == inputs_embeds: {x0_same}")
    print(f"reconstruction ||y - sum_i J_i x_i - b|| / ||y||: ours {rec_ours:.3e}, reference {rec_ref:.3e}")

    ok = rel_max <= TOLERANCE[dtype] and x0_same
    add_row(args.summary, "jacobian", f"full detached Jacobian, {args.tokens} tokens, {args.dtype}",
            f"random Llama d={args.hidden}, {args.layers} layers, MLP {model.config.intermediate_size}, "
            f"{args.heads}/{model.config.num_key_value_heads} heads", args.device, seconds(med["ours"]),
            f"{seconds(med['reference'])} (autograd.functional.jacobian)", med["reference"] / med["ours"],
            f"max rel. diff {rel_max:.1e}" + ("" if ok else " FAIL"))
    print("OK" if ok else "FAIL: the Jacobians disagree")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
