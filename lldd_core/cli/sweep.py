"""The scaling study: ``sweep`` (resumable, local or on Ray)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from .. import ranges as R
from .common import (
    EXIT_INTERRUPTED,
    Progress,
    add_loading_args,
    emit_json,
    format_params,
    model_spec,
    number_option,
)
from .gains import add_gains_options


def _sweep_command(args: argparse.Namespace) -> str:
    """The command line that repeats this sweep (to resume it): every setting spelled out."""
    import shlex

    parts = ["python", "-m", "lldd_core", "sweep"]
    parts += ["--family", args.family] if args.family else ["--models", args.models]
    parts += ["--datasets", args.datasets, "--order", str(args.order), "--eps", f"{args.eps:g}", "--n-eval",
              str(args.n_eval), "--complement", args.complement, "--mode", args.mode, "--sizes", ",".join(map(str, args.sizes)),
              "--seed", str(args.seed), "--dtype", args.dtype, "--device", args.device]
    if args.max_memory:
        parts += ["--max-memory", args.max_memory]
    if args.quantization != "none":
        parts += ["--quantization", args.quantization]
    if args.engine == "ray":
        parts += ["--engine", "ray", "--chunk-size", str(args.chunk_size)]
        parts += ["--address", args.address] if args.address else []
        parts += ["--gpus-per-task", f"{args.gpus_per_task:g}"] if args.gpus_per_task is not None else []
    parts += [flag for flag, on in (("--trust-remote-code", args.trust_remote_code),
                                    ("--allow-pickle", args.allow_pickle)) if on]
    return " ".join(shlex.quote(p) for p in parts)


def _cell_line(cell: Any) -> str:
    """One line per finished cell: ``[computed] model × dataset: Spearman 0.930, Pearson 0.912 (1.2 s)``."""
    head = f"[{cell.status}] {cell.model} × {cell.dataset}"
    if cell.done:
        return (f"{head}: Spearman {_fmt(cell.mean_spearman)}, Pearson {_fmt(cell.mean_pearson)} "
                f"({cell.elapsed_s:.1f} s)")
    return f"{head}: {cell.message}" if cell.status == "failed" else head  # unavailable: the notes say why


def _fmt(x: float | None) -> str:
    return f"{x:.3f}" if x is not None and math.isfinite(x) else "-"


class _SweepBars:
    """tqdm on stderr over the cells to compute, the running cell's own bar under it, a line per cell."""

    def __init__(self, enabled: bool, unit: str = "cell") -> None:
        self.enabled = enabled
        self.unit = unit
        self.bar = None
        self.inner = Progress(enabled)
        self.finished: list[Any] = []

    def progress(self, done: int, total: int, message: str) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit=self.unit, desc="sweep", dynamic_ncols=True)
        self.bar.total = total  # the Ray engine learns the number of chunk tasks as it goes
        self.bar.n = done
        self.bar.set_postfix_str(message[-70:], refresh=True)

    def cell(self, fraction: float, message: str) -> None:
        self.inner(fraction, message)

    def on_cell(self, cell: Any) -> None:
        self.finished.append(cell)
        self.inner.close()
        self.inner = Progress(self.enabled)
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(_cell_line(cell), file=sys.stderr)

    def close(self) -> None:
        self.inner.close()
        if self.bar is not None:
            self.bar.close()


def _print_sweep(cells: list[Any], elapsed: float) -> None:
    """The cells as a table (model, params, dataset, status, mean Spearman, mean Pearson) and their notes."""
    from ..sweep.study import fill_params, summary_line

    rows = [("model", "params", "dataset", "status", "Spearman", "Pearson")]
    for c in fill_params(cells):
        params = format_params(c.n_params) if c.n_params is not None else "?"
        rows.append((c.model, params, c.dataset, c.status, _fmt(c.mean_spearman), _fmt(c.mean_pearson)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = sys.stdout
    for r in rows:
        out.write("  ".join(v.rjust(w) if i in (1, 4, 5) else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                  .rstrip() + "\n")
    notes: dict[tuple[str, str], list[str]] = {}  # (status, message) -> cells: one model or dataset often
    for c in cells:                                  # explains a whole row or column of the grid
        if c.message and not c.done:
            notes.setdefault((c.status, c.message), []).append(f"{c.model} × {c.dataset}")
    if notes:
        out.write("notes:\n")
        for (status, message), where in notes.items():
            out.write(f"  [{status}] {', '.join(where)}:\n    {message}\n")
    out.write(f"{summary_line(cells)} in {elapsed:.2f} s\n")


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..analysis.settings import GainsSettings
    from ..errors import InputError
    from ..service import get_service
    from ..sweep.study import FAMILIES, STATUSES, family_models, parse_list, run_sweep, sweep_status

    start = time.perf_counter()
    models = family_models(args.family) if args.family else parse_list(args.models or "")
    datasets = parse_list(args.datasets)
    if not models:
        raise InputError(f"No models: give --models a,b,c (hub ids, paths, demo:<name>) or --family "
                         f"{'|'.join(FAMILIES)}.")
    if not datasets:
        raise InputError("No datasets: give --datasets x,y (names from the datasets command, or CSV/JSONL files).")
    settings = GainsSettings.from_args(args).check()
    like = model_spec(args, models[0])
    service = get_service()
    if args.status_only:
        cells = sweep_status(service, models, datasets, like=like, settings=settings)
    else:
        bars = _SweepBars(not args.quiet, "cell" if args.engine == "local" else "task")
        try:
            if args.engine == "ray":
                from ..sweep.ray import run_ray_sweep

                cells = run_ray_sweep(service, models, datasets, like=like, settings=settings, address=args.address,
                                      chunk_size=args.chunk_size, gpus_per_task=args.gpus_per_task,
                                      progress=bars.progress, on_cell=bars.on_cell).cells
            else:
                cells = run_sweep(service, models, datasets, like=like, settings=settings, progress=bars.progress,
                                  cell_progress=bars.cell, on_cell=bars.on_cell).cells
        except KeyboardInterrupt:
            bars.close()
            n = len(models) * len(datasets)
            sys.stderr.write(
                f"interrupted after {len(bars.finished)} of {n} cells; every finished cell is stored in the cache. "
                f"Resume with the same command:\n  {_sweep_command(args)}\n"
            )
            return EXIT_INTERRUPTED
        finally:
            bars.close()
    elapsed = time.perf_counter() - start
    done = sum(c.done for c in cells)
    if args.json:
        counts = {s: sum(c.status == s for c in cells) for s in STATUSES}
        emit_json({"models": models, "datasets": datasets, "settings": settings.as_dict(), "dtype": args.dtype,
                    "device": args.device, "status_only": bool(args.status_only), "counts": counts,
                    "complete": done == len(cells), "elapsed_s": elapsed, "cells": [c.as_dict() for c in cells]},
                   args.json, "Every finished cell is stored in the cache: run the same command with a writable "
                   "--json path to get them at once.")
    if args.json != "-":
        _print_sweep(cells, elapsed)
    if done == len(cells):
        return 0
    bad = [c for c in cells if c.status in ("failed", "unavailable")]
    missing = len(cells) - done - len(bad)
    if bad:
        what = ", ".join(f"{sum(c.status == s for c in bad)} {s}" for s in ("failed", "unavailable")
                         if any(c.status == s for c in bad))
        sys.stderr.write(f"not complete: {what} of {len(cells)} cells (see the notes); fix the cause and run the "
                         "same command again, finished cells are kept\n")
    if missing:
        sys.stderr.write(f"{missing} of {len(cells)} cells have no result yet: run without --status-only to "
                         "compute them\n")
    return 1


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    from ..sweep.study import FAMILIES

    p = sub.add_parser(
        "sweep",
        help="the scaling study: gain-curve agreement of every model × dataset, resumable, into the same cache",
        description="Run the gains analysis (same settings and cache as the gains command and the dashboard) for "
        "every model of --models or --family on every dataset of --datasets, model by model. Finished cells are "
        "stored as they complete, so an interrupted sweep resumes by running the same command; cached cells are "
        "skipped without loading their model. Exit status 0 when every cell has a result, 1 otherwise.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--models", default=None,
                       help="comma-separated hub ids, local directories or demo:<name>, smallest first")
    which.add_argument("--family", choices=list(FAMILIES), default=None,
                       help="a model family: demo (demo:gpt2-small/medium/large, nothing downloaded), gpt2 "
                       "(gpt2, gpt2-medium, gpt2-large: the LLV paper's), pythia (EleutherAI/pythia-70m..1b)")
    p.add_argument("--datasets", default="sentiment",
                   help="comma-separated dataset names (see the datasets command) or CSV/JSONL files "
                   "(default: %(default)s)")
    add_gains_options(p)
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: cell after cell in this process (default); ray: bases and prompt chunks as tasks on "
                   "a Ray cluster (pip install '.[ray]')")
    g.add_argument("--address", default=None,
                   help="with --engine ray: the cluster ('auto', host:6379 or ray://host:10001); default: start a "
                   "local one")
    number_option(g, R.CHUNK_SIZE, 8, "with --engine ray: evaluation prompts per task")
    number_option(g, R.GPUS_PER_TASK, None, "with --engine ray: GPUs each task requests",
         default_text="1 if the cluster has GPUs, else 0")
    p.add_argument("--status-only", action="store_true",
                   help="only report what the cache holds (loads no weights, builds nothing)")
    g = p.add_argument_group("models")
    add_loading_args(g)
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the cells as JSON to FILE ('-' for stdout: then no table)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)
