"""Steered generation beside the unsteered one: ``steer``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import ranges as R
from .common import add_model_args, dataset_arg, number_option, report, run_analysis, sizes_option


def cmd_steer(args: argparse.Namespace) -> int:
    from ..steering.core import GenerationSettings

    start = time.perf_counter()
    dataset = dataset_arg(args.dataset)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    layers = args.layer  # a list of integers (ranges.list_argtype); checked against the model by the service
    computed = run_analysis(args, lambda svc, spec, progress: svc.steer(
        spec, args.prompt, args.method, dataset=dataset, settings=settings, layers=layers, strength=args.strength,
        positions=args.positions, dy=args.dy, order=args.order, steer_text=args.steer_text or "", lam=args.lam,
        variant=args.variant, q=args.q, r=args.r, qf=args.qf, sizes=args.sizes, seed=args.seed,
        progress=progress))

    def body(r, out) -> None:
        out.write(f"method     {r.method}  {r.params}\n")
        out.write(f"prompt     {r.prompt!r}\n")
        out.write(f"unsteered  {r.unsteered!r}\n")
        out.write(f"steered    {r.steered!r}\n")
        if r.readout_unsteered.size or r.readout_steered.size:
            def mean(x) -> str:
                return f"{x.mean():.3f}" if x.size else "-"

            out.write(f"readout    mean over generated tokens ({r.dataset}): unsteered {mean(r.readout_unsteered)}, "
                      f"steered {mean(r.readout_steered)}\n")

    return report(args, computed, start, body)


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("steer", help="steered generation beside the unsteered one, with the concept readout")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--method", choices=["additive", "llv", "jacobian", "lqr"], required=True)
    p.add_argument("--dataset", default=None, help="concept dataset (needed except for jacobian; adds the readout)")
    p.add_argument("--layer", type=R.list_argtype(R.STEER_LAYERS), default=None,
                   help=f"additive: block-input layer(s), comma-separated, each {R.STEER_LAYER.describe()}; jacobian: "
                   f"x_layer, {R.JACOBIAN_LAYER.describe()} (default: two thirds of the depth)")
    number_option(p, R.STRENGTH, None, "additive α along the unit direction v_l",
         default_text="one class-mean distance ||E_l|| at the layer")
    p.add_argument("--positions", choices=["last", "all"], default="last", help="additive: where to add α v_l")
    number_option(p, R.DY, 1.0, "llv: target readout shift Δy")
    number_option(p, R.ORDER, 32, "llv: reduced order of the surrogate")
    p.add_argument("--steer-text", default=None, help="jacobian: the steering phrase, e.g. 'The Golden Gate'")
    p.add_argument("--lam", type=R.LAM.argtype(), default=None,
                   help=f"{R.LAM.describe()}, by method: jacobian blend h ← λh + (1-λ)a, {R.LAM_BLEND.describe()} "
                   f"(1 = unsteered; default 0.5); jacobian additive h ← h + λ·a·||h||/(2||a||), "
                   f"{R.LAM_ADDITIVE.describe()} (0 = unsteered); lqr setpoint scale β_k = λ||E_k||, "
                   f"{R.LAM_LQR.describe()} (default 1)")
    p.add_argument("--variant", choices=["blend", "additive"], default="blend", help="jacobian: the paper's blend or "
                   "the reference implementation's norm-matched addition")
    number_option(p, R.Q, 10, "lqr: state weight")
    number_option(p, R.R, 10, "lqr: control weight")
    number_option(p, R.QF, 1, "lqr: terminal state weight")
    number_option(p, R.MAX_NEW, 40, "new tokens to generate; the prompt plus these must fit the model's context")
    p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    number_option(p, R.TEMPERATURE, 1.0, "with --sample: temperature")
    number_option(p, R.TOP_P, 1.0, "with --sample: nucleus top-p")
    sizes_option(p)
    number_option(p, R.SEED, 0, "sampling seed and split seed")
    p.set_defaults(func=cmd_steer)
