"""Benchmark: the Steering lab's batched sweep against one generation per (setting, prompt), and the forward
passes the LLV-predicted best layer saves against a full layer sweep.

On a concept dataset (default: the demo model, sentiment), in one process:

* the additive and LLV cells of a sweep (``--layers`` × ``--strengths`` additive, ``--dy`` LLV) are planned through
  the registry once; then generated **batched** as the lab does (all prompts of a cell in one call, and up to 64
  rows of several cells per call, each row group with its own vectors) and **one generation per (setting,
  prompt)**; the script prints both wall times, their ratio, and how many texts are the same token for token;
* a lab sweep of the additive method at every trusted layer (temporary cache) reports the LLV-predicted and the
  measured best layer and the forward passes of the full layer sweep against a sweep at the predicted layer only.

    python bench/steer_sweep.py
    python bench/steer_sweep.py --model demo:gpt2-medium --prompts 16 --tokens 24

``--summary FILE`` appends the result rows of ``bench/gpu.sh``'s table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_run_options, bench_parser, sync
from summary import add_row, seconds  # bench/summary.py: this folder is sys.path[0] for a bench

from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.steering.calibrate import trusted_layers
from lldd_core.steering.generate import GenerationSettings, generate
from lldd_core.steering.lab.settings import SweepSettings
from lldd_core.steering.lab.sweep import batches, plan_cell, row_vectors, sweep_request
from lldd_core.store.cache import ResultCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    p.add_argument("--model", default="demo:gpt2-small")
    p.add_argument("--dataset", default="sentiment")
    p.add_argument("--prompts", type=int, default=8, help="evaluation prompts per cell")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per continuation")
    p.add_argument("--layers", default="1,2,3", help="additive layers")
    p.add_argument("--strengths", default="0,4,8,16,32", help="additive α")
    p.add_argument("--dy", default="0,10,20,40", help="LLV Δy")
    p.add_argument("--sizes", default="60,30,30", help="concept/operating/evaluation split sizes per class")
    add_run_options(p, device="cuda" if torch.cuda.is_available() else "cpu", seed=False)
    return p.parse_args(argv)


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = ModelSpec(args.model, device=args.device)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    layers = tuple(int(x) for x in args.layers.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(ResultCache(Path(tmp) / "cache"))
        info = svc.info(spec)
        settings = SweepSettings(methods=("additive", "llv"), layers=layers, n_prompts=args.prompts,
                                 max_new_tokens=args.tokens, sizes=sizes,
                                 strengths=(("additive", floats(args.strengths)), ("llv", floats(args.dy))))
        request = sweep_request(info, spec, args.dataset, settings)
        handle = svc.handle(spec)
        setup = svc.concept_setup(handle, request.data, settings.sizes, settings.seed, None)
        plans = {cell: plan_cell(svc, handle, request, cell, setup) for cell in request.cells}
        ids = [info.encode(p) for p in request.prompts]
        gen = GenerationSettings(max_new_tokens=args.tokens)
        N = len(ids)

        def batched() -> dict:
            out = {}
            for group in batches(request.cells, plans, N):
                texts = generate(handle, ids * len(group), [row_vectors([plans[c] for c in group], N)], gen)
                out.update({c: [g.new_ids for g in texts[i * N:(i + 1) * N]] for i, c in enumerate(group)})
            return out

        def one_by_one() -> dict:
            return {c: [generate(handle, [p], [copy.copy(i) for i in plans[c].interventions], gen)[0].new_ids
                        for p in ids] for c in request.cells}

        generate(handle, ids[:1], (), GenerationSettings(max_new_tokens=2))  # warm up
        timed = {}
        for name, run in (("batched", batched), ("one per (setting, prompt)", one_by_one)):
            sync()
            t0 = time.perf_counter()
            texts = run()
            sync()
            timed[name] = (time.perf_counter() - t0, texts)
        (t_b, a), (t_1, b) = timed["batched"], timed["one per (setting, prompt)"]
        same = sum(a[c][i] == b[c][i] for c in request.cells for i in range(N))
        total = len(request.cells) * N
        print(f"{args.model}: {info.n_layers} layers, d = {info.d_model}; {len(request.cells)} cells (additive "
              f"{len(layers)} layers x {len(floats(args.strengths))} α, LLV {len(floats(args.dy))} Δy) x {N} prompts, "
              f"{args.tokens} new tokens, {args.device}, {torch.get_num_threads()} threads")
        print(f"batched sweep               {t_b:8.2f} s")
        print(f"one per (setting, prompt)   {t_1:8.2f} s   -> {t_1 / t_b:.1f}x faster batched; "
              f"{same}/{total} texts the same token for token")
        add_row(args.summary, "steer_sweep", f"sweep generation: {len(request.cells)} cells x {N} prompts, "
                f"{args.tokens} tokens", args.model, args.device, seconds(t_b), seconds(t_1), t_1 / b_or(t_b),
                f"{same}/{total} texts identical")

        full = SweepSettings(methods=("additive",), layers=tuple(trusted_layers(setup)), n_prompts=args.prompts,
                             max_new_tokens=args.tokens, sizes=sizes,
                             strengths=(("additive", floats(args.strengths)),))
        r = svc.steer_sweep(spec, args.dataset, full).result
        fp = r.forward_passes
        print(f"\nbest layer: LLV predicted x_{r.predicted_best_layer}, measured x_{r.measured_best_layer} "
              f"(additive at every trusted layer {fp['layers']} x {fp['strengths']} non-zero α)")
        print(f"forward passes: full layer sweep {fp['full_layer_sweep']}, at the predicted layer "
              f"{fp['predicted_layer_sweep']} (saved {fp['saved']}, {fp['full_layer_sweep'] / fp['predicted_layer_sweep']:.1f}x "
              f"fewer); the prediction: {fp['prediction_jvps']} Jacobian-vector products")
        add_row(args.summary, "steer_sweep", "forward passes: sweep at the LLV-predicted layer vs every layer",
                args.model, args.device, f"{fp['predicted_layer_sweep']} passes", f"{fp['full_layer_sweep']} passes",
                fp["full_layer_sweep"] / fp["predicted_layer_sweep"],
                f"predicted x_{r.predicted_best_layer}, measured x_{r.measured_best_layer}")
    return 0


def b_or(value: float) -> float:
    """``value``, never zero (a ratio's denominator)."""
    return value if value > 0 else 1e-12


if __name__ == "__main__":
    raise SystemExit(main())
