"""The Steering lab's sweep: ``steer-sweep``.

``--strengths`` takes each method's own knob (additive ``α``, LLV ``Δy``, Jacobian ``λ``, LQR ``q``;
:mod:`lldd_core.steering.lab.knobs`): ``0,4,16`` for every method, or ``llv=0,10,20`` for one (repeatable).
Every cell is cached on its own, so the same command with more layers or strengths computes only the new cells,
and an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, TextIO

from .. import ranges as R
from .common import add_model_args, dataset_arg, number_option, report, run_analysis, sizes_option

if TYPE_CHECKING:
    from ..steering.lab.answers import SweepResult

#: The methods the lab sweeps (the registry's built-in four; the knobs module says how).
METHODS = ("additive", "llv", "jacobian", "lqr")


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"must be comma-separated methods of {', '.join(METHODS)}; got {text!r}")
    return names


def settings_of(args: argparse.Namespace) -> Any:
    """The :class:`~lldd_core.steering.lab.settings.SweepSettings` of the command line (built once)."""
    from ..steering.lab.settings import NEUTRAL_PROMPTS, SweepSettings, parse_strengths

    prompts = tuple(p for p in (args.prompt or []))
    return SweepSettings(
        methods=args.method, layers=None if args.layers is None else tuple(args.layers),
        strengths=parse_strengths(args.strengths, args.method), prompts=prompts, n_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens, sizes=args.sizes, seed=args.seed,
        neutral=tuple(args.neutral) if args.neutral else NEUTRAL_PROMPTS, classifier=args.classifier,
        classifier_label=args.classifier_label, fluency_model=args.fluency_model, steer_text=args.steer_text,
        success_by=args.success_by, success_target=args.success_target, fluency_budget=args.fluency_budget)


def cmd_steer_sweep(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    dataset = dataset_arg(args.dataset)
    settings = settings_of(args)  # ranges checked against the model by the service
    computed = run_analysis(args, lambda svc, spec, progress: svc.steer_sweep(spec, dataset, settings,
                                                                               progress=progress))

    def body(r: SweepResult, out: TextIO) -> None:
        out.write(f"dataset    {r.dataset}: steering towards {r.target!r}, {len(r.prompts)} prompts, success by "
                  f"{r.success_by} (probe held-out accuracy {r.probe_accuracy:.3f})\n")
        head = f"{'method':<10}{'layer':>6}{'strength':>10}{'success':>9}{'ppl':>10}{'rep':>7}{'kl':>9}{'shift':>9}\n"
        out.write(head)
        for row in [r.unsteered, *r.rows]:
            layer = "-" if row.get("layer") is None else str(row["layer"])
            strength = "-" if "strength" not in row else f"{row['strength']:g}"
            out.write(f"{row['method']:<10}{layer:>6}{strength:>10}{row['success']:>9.3f}{row['perplexity']:>10.4g}"
                      f"{row['repetition']:>7.3f}{row['kl']:>9.4f}{row['readout_shift']:>9.4f}\n")
        for method, rec in r.recommended.items():
            text = "none reaches the target within the budget" if rec is None else (
                f"layer {'every' if rec['layer'] is None else rec['layer']}, strength {rec['strength']:g} (success {rec['success']:.3f}, "
                f"perplexity {rec['perplexity']:.4g})")
            out.write(f"recommended {method}: {text}\n")
        fp = r.forward_passes
        out.write(f"best layer predicted {r.predicted_best_layer}, measured {r.measured_best_layer}; forward passes "
                  f"full layer sweep {fp['full_layer_sweep']}, at the predicted layer {fp['predicted_layer_sweep']} "
                  f"(saved {fp['saved']}; the prediction took {fp['prediction_jvps']} Jacobian-vector products)\n")
        out.write(f"cells      {r.cells_computed} computed, {r.cells_cached} from the cache\n")

    return report(args, computed, start, body)


def register(sub: Any) -> None:
    """Add ``steer-sweep`` to the subparsers ``sub``."""
    p = sub.add_parser("steer-sweep", help="the Steering lab: success, fluency and side effects over methods, "
                       "layers and strengths; Pareto fronts, recommended settings, predicted best layer")
    add_model_args(p)
    p.add_argument("--dataset", required=True, help="concept dataset (name or CSV/JSONL file)")
    p.add_argument("--method", type=_methods, default=METHODS,
                   help=f"comma-separated methods of {', '.join(METHODS)} (default: all)")
    p.add_argument("--layers", type=R.list_argtype(R.STEER_LAYERS), default=None,
                   help="layers x_l of the methods that steer at one layer (additive 0..L-1, jacobian 1..L): "
                   f"comma-separated, each {R.STEER_LAYERS.describe()} (default: additive 1..L-1, jacobian its "
                   "default layer)")
    p.add_argument("--strengths", action="append", default=None, metavar="VALUES",
                   help="each method's own knob (additive α, llv Δy, jacobian λ, lqr q), comma-separated: '0,4,16' "
                   "for every method or 'llv=0,10,20' for one; repeatable (default: each knob's grid)")
    number_option(p, R.N_PROMPTS, 8, "evaluation prompts: the evaluation split's texts of the class steered away from")
    p.add_argument("--prompt", action="append", default=None, help="an evaluation prompt of your own (repeatable; "
                   "replaces the evaluation split's)")
    number_option(p, R.MAX_NEW, 16, "new tokens per continuation (greedy)")
    p.add_argument("--classifier", default=None, metavar="PATH",
                   help="a local Hugging Face sequence-classification model as external judge")
    p.add_argument("--classifier-label", default=None, help="the judge's label of the target class "
                   "(default: the dataset's target class by name)")
    p.add_argument("--fluency-model", default=None, metavar="PATH", help="another local causal LM whose perplexity "
                   "of the continuations is reported too")
    p.add_argument("--neutral", action="append", default=None, help="a neutral prompt of the side-effect measure "
                   "(repeatable; default: six world-fact prompts)")
    p.add_argument("--steer-text", default="", help="the Jacobian method's phrase (default: the concept split's "
                   "first text of the target class)")
    p.add_argument("--success-by", choices=("verdict", "probe", "judge"), default=None,
                   help="what counts a text as a success (default: the judge with --classifier, else the verdict)")
    number_option(p, R.SUCCESS_TARGET, 0.75, "the recommendation's success target (share of texts)")
    number_option(p, R.FLUENCY_BUDGET, 3.0, "the recommendation's fluency budget (perplexity ÷ unsteered)")
    sizes_option(p)
    number_option(p, R.SEED, 0, "split seed")
    p.set_defaults(func=cmd_steer_sweep)
