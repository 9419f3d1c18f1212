"""Commands on a concept dataset: ``gains`` and ``control``."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING, Any, TextIO

from .. import ranges as R
from ..analysis.settings import COMPLEMENTS, MODES, ControlSettings, GainsSettings
from .common import add_model_args, dataset_arg, number_option, report, run_analysis, sizes_option

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    from ..analysis.control import ControlResult
    from ..analysis.gains import GainsResult


def cmd_gains(args: argparse.Namespace) -> int:
    from ..concepts.files import load_user_file

    start = time.perf_counter()
    dataset = load_user_file(args.dataset) if os.path.isfile(args.dataset) else args.dataset
    settings = GainsSettings.from_args(args)  # --sizes parsed and checked by ranges.sizes_argtype
    computed = run_analysis(args, lambda svc, spec, progress: svc.gains(spec, dataset, settings, progress=progress))

    def body(r: GainsResult, out: TextIO) -> None:
        out.write(f"dataset    {r.dataset} ({r.source}): {r.classes[0]} vs {r.classes[1]}, per class "
                  f"{r.split_sizes['concept']}/{r.split_sizes['operating']}/{r.split_sizes['evaluation']} "
                  f"(concept/operating/evaluation)\n")
        out.write(f"surrogate  order {r.order}, {r.complement} complement, {r.mode} mode; ε = {r.eps:g}; "
                  f"{len(r.prompts)} evaluation prompts\n")
        out.write(f"{'layer':>6} {'predicted':>10} {'measured':>10} {'exact':>10}   (means over prompts)\n")
        for j, k in enumerate(r.layers):
            out.write(f"{k:>6} {r.predicted[:, j].mean():10.4f} {r.measured[:, j].mean():10.4f} "
                      f"{r.exact[:, j].mean():10.4f}\n")
        out.write(f"agreement  mean Spearman {r.mean_spearman:.3f}, mean Pearson {r.mean_pearson:.3f}; best layer: "
                  f"predicted {r.best_layer_predicted}, measured {r.best_layer_measured}, exact "
                  f"{r.best_layer_exact}\n")

    return report(args, computed, start, body)

def cmd_control(args: argparse.Namespace) -> int:
    import numpy as np

    start = time.perf_counter()
    dataset = dataset_arg(args.dataset)
    settings = ControlSettings.from_args(args, targets=tuple(args.target))
    computed = run_analysis(args, lambda svc, spec, progress: svc.control(spec, dataset, settings=settings,
                                                                          progress=progress))

    def body(r: ControlResult, out: TextIO) -> None:
        out.write(f"dataset    {r.dataset}: {r.classes[0]} vs {r.classes[1]}; surrogate order {r.order} "
                  f"({r.complement}); {r.n_prompts} evaluation prompts; tolerance {r.tol:g} of Δy\n")
        out.write("gains h    " + " ".join(f"{g:.3f}" for g in r.gains) + "\n")
        for j, dy in enumerate(r.targets):
            out.write(f"\nΔy = {dy:g}\n{'schedule':<9} {'reached':>8} {'achieved':>9} {'energy':>10} {'vs llv':>8}   u over layers\n")
            ref = r.energy[r.names.index("llv"), j]
            for s, name in enumerate(r.names):
                e = r.energy[s, j]
                ratio = f"{e / ref:7.2f}x" if r.reached[s, j] and np.isfinite(ref) and ref > 0 else "      -"
                energy = f"{e:10.4g}" if r.reached[s, j] else "         -"
                out.write(f"{name:<9} {'yes' if r.reached[s, j] else 'NO':>8} {r.achieved[s, j]:9.4f} {energy} "
                          f"{ratio}   " + " ".join(f"{x:.3g}" for x in r.u[s, j]) + "\n")

    return report(args, computed, start, body)


def add_gains_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The :class:`~lldd_core.analysis.settings.GainsSettings` options, defaults from the settings (``gains``, ``sweep``)."""
    G = GainsSettings
    number_option(p, R.ORDER, G.default("order"), "reduced order d of the surrogate")
    number_option(p, R.EPS, G.default("eps"), "injection size ε for the measured gains (0.01..0.5 is the useful range)")
    number_option(p, R.N_EVAL, G.default("n_eval"), "evaluation prompts")
    p.add_argument("--complement", choices=list(COMPLEMENTS), default=G.default("complement"),
                   help="how the basis is completed beyond v_l (default krylov; random and pca are ablations)")
    p.add_argument("--mode", choices=list(MODES), default=G.default("mode"),
                   help="each prompt's own Jacobians (default) or the operating prompts' mean reduced model")
    sizes_option(p)
    number_option(p, R.SEED, G.default("seed"), "seed of the splits and the random complement")


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("gains", help="LLV-predicted, measured and exact gain curves of a concept over layers")
    add_model_args(p)
    p.add_argument("--dataset", required=True,
                   help="a dataset name (see the datasets command) or a CSV/JSONL file with text and label columns")
    add_gains_options(p)
    p.set_defaults(func=cmd_gains)

    C = ControlSettings
    p = sub.add_parser("control", help="least-energy (LLV) and heuristic multi-layer schedules, validated in the model")
    add_model_args(p)
    p.add_argument("--dataset", required=True, help="a dataset name or a CSV/JSONL file with text and label columns")
    targets = ",".join(str(x) for x in C.default("targets"))
    p.add_argument("--target", type=R.list_argtype(R.TARGET, max_len=R.MAX_TARGETS), default=targets,
                   help=f"target readout shift(s) Δy, comma-separated, at most {R.MAX_TARGETS}: each "
                   f"{R.TARGET.describe()} (default {targets})")
    number_option(p, R.ORDER, C.default("order"), "reduced order of the surrogate")
    p.add_argument("--complement", choices=list(COMPLEMENTS), default=C.default("complement"))
    number_option(p, R.N_EVAL, C.default("n_eval"), "evaluation prompts the shift is averaged over")
    number_option(p, R.TOL, C.default("tol"), "relative tolerance on Δy of the bisection")
    sizes_option(p)
    number_option(p, R.SEED, C.default("seed"), "seed of the splits and of the random-layer schedule")
    p.set_defaults(func=cmd_control)
