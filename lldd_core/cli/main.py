"""``python -m lldd_core``: scripted and batch runs of the analyses, demo models and the cache.

Commands::

    python -m lldd_core jacobian --prompt TEXT [--model M] ...     detached vs ordinary Jacobian
    python -m lldd_core spectrum --prompt TEXT [--layer K] [--top-k 8] [--decode 8]   decoded spectra
    python -m lldd_core layers --prompt TEXT [--top-k 8] [--no-lens]   every layer's views
    python -m lldd_core gains --dataset D [--order 32] [--eps 0.1] [--n-eval 32]   LLV gain curves
    python -m lldd_core sweep --models A,B,C|--family F --datasets X,Y [gains options] [--status-only]
                                                                     the scaling study: gains of every cell
    python -m lldd_core control --dataset D --target 0.5,1,2        LLV vs heuristic schedules, validated
    python -m lldd_core steer --prompt P --method additive|llv|jacobian|lqr [...]   steered vs unsteered text
    python -m lldd_core datasets [--json -]                          concept datasets it can use
    python -m lldd_core demo build [--size S|all] [--arch A] [--force]   build the demo models
    python -m lldd_core demo info [--json -]                        list the demo models
    python -m lldd_core cache info|clear                            the result cache

Every analysis command takes ``--model``, ``--revision``, ``--dtype``, ``--device`` and ``--json``.
The default model is the built-in demo model ``demo:gpt2-small`` (``$LLDD_DEFAULT_MODEL``
overrides it); a demo model that is not built yet is built on first use (a few minutes on a CPU,
once). Progress goes to stderr (tqdm), results to stdout or the ``--json`` file.

Every numeric option states its range in ``--help`` and refuses what lies outside it
(:mod:`lldd_core.ranges`; bounds that depend on the model, such as the hidden size, are checked once
its config is read). Exit status: 0 done; 1 ``sweep`` with cells left to compute; 2 an error a user
can cause (a refused option, a bad input, an unwritable ``--json`` file; one ``error:`` line on
stderr, no traceback, and a result already computed stays in the cache); 130 interrupted by Ctrl-C
(one line, also while torch is still importing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NoReturn

from .. import ranges as R

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    from ..demo import DemoInfo
    from ..models.loading import ModelSpec

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from ..models.loading import default_model

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default_model(),
        help="hub id (org/name), local directory, or demo:<name> for a built-in demo model (default: %(default)s)",
    )
    g.add_argument("--revision", default=None, help="branch, tag or commit of a hub model")
    _add_loading_args(g)
    p.add_argument("--json", metavar="FILE", default=None, help="write the result as JSON to FILE ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_loading_args(g: argparse._ArgumentGroup) -> None:
    """How weights load: precision, placement, quantization and the safety switches."""
    from ..models.loading import DEVICE_CHOICES, DTYPES, QUANTIZATIONS

    g.add_argument("--dtype", default="float32", choices=list(DTYPES), help="default: %(default)s")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or a torch device "
                   "(default: auto; map: spread over all GPUs, offloading what does not fit)")
    g.add_argument("--max-memory", default=None, metavar="SPEC",
                   help="with --device map: per-device limits such as '0=20GiB,cpu=64GiB' (the rest goes to disk)")
    g.add_argument("--quantization", default="none", choices=list(QUANTIZATIONS),
                   help="8-bit or 4-bit weights via bitsandbytes (pip install '.[quant]', CUDA only)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository to run")
    g.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin) weights; safetensors only otherwise")


def _spec(args: argparse.Namespace, model: str | None = None):
    """The model spec of the command line (``model`` overrides ``--model``)."""
    from ..models.loading import ModelSpec

    return ModelSpec(
        model=model if model is not None else args.model,
        revision=getattr(args, "revision", None),
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        max_memory=args.max_memory,
        quantization=args.quantization,
    )


class _Progress:
    """tqdm on stderr driven by ``progress(fraction, message)`` callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None  # created on the first report, so errors before any work print cleanly

    def __call__(self, fraction: float, message: str) -> None:
        if self.enabled:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=1000, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}")
            self.bar.set_description_str(message[:60])
            self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finite(x: Any) -> Any:
    """JSON has no NaN/Inf: map them to None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return x


#: What a failed ``--json`` write adds when the result itself is safe in the cache.
IN_CACHE = "The result is stored in the cache: run the same command with a writable --json path to get it at once."


def _emit_json(payload: dict[str, Any], target: str, note: str = "") -> None:
    """``payload`` as JSON to stdout (``-``) or the file ``target``; a file that cannot be written is one
    :class:`~lldd_core.errors.LLDDError` line (``note`` says where the result is meanwhile)."""
    from ..errors import LLDDError

    text = json.dumps(_finite(payload), indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    try:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    except (OSError, ValueError) as err:  # a folder, a missing folder, a path under a file, /proc, a full disk
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise LLDDError(f"Could not write the JSON to {target!r}: {reason}. {note or 'Give a writable --json path.'}"
                        .strip()) from None


def _stored_note(computed: Any) -> str:
    """:data:`IN_CACHE` unless the service said it could not store the result."""
    return "" if getattr(computed, "warning", None) else IN_CACHE


@contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """Silence transformers' own tqdm bars (e.g. "Writing model shards") so only ours shows."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _unwritable(name: str, err: OSError) -> Exception:
    """A failed demo build for lack of a writable disk: the user's environment, not a bug."""
    from ..demo import demo_dir
    from ..errors import LLDDError

    return LLDDError(
        f"Could not write the demo model {name} to {demo_dir()}: {err.strerror or err}. "
        "Set LLDD_DEMO_DIR to a writable folder with some free space."
    )


@contextmanager
def _first_use_build(spec: ModelSpec, quiet: bool) -> Iterator[None]:
    """Around an analysis call: say on stderr why the first run of a demo model takes minutes.

    The service builds a missing demo model itself (reporting to the command's progress bar); this
    adds the one-line explanation, keeps transformers' bars out of the way and explains a disk
    that cannot be written. Analysis commands wrap their service call in it.
    """
    from ..service import get_service

    if not get_service().needs_build(spec):
        yield
        return
    if not quiet:
        sys.stderr.write(f"{spec.model} is not built yet: building it first (a few minutes on a CPU, once)\n")
    try:
        with _no_transformers_bars():
            yield
    except OSError as err:
        raise _unwritable(spec.model, err) from err


# --- commands ----------------------------------------------------------------------------------


def cmd_jacobian(args: argparse.Namespace) -> int:
    from ..service import get_service

    start = time.perf_counter()
    spec = _spec(args)
    progress = _Progress(not args.quiet)
    try:
        with _first_use_build(spec, args.quiet):
            service = get_service()
            R.TOP_K.check(args.top_k, hi=service.info(spec, progress).d_model)  # before any work
            computed = service.jacobian(
                spec, args.prompt, layer=args.layer, final_norm=not args.no_final_norm, progress=progress
            )
    finally:
        progress.close()
    r = computed.result
    payload = {
        "model": r.model,
        "revision": r.revision,
        "dtype": r.dtype,
        "family": r.family,
        "tokens": r.tokens,
        "input_ids": r.input_ids,
        "layer": r.layer,
        "n_layers": r.n_layers,
        "final_norm": r.final_norm,
        "reconstruction_error": r.reconstruction_error,
        "plain_reconstruction_error": r.plain_reconstruction_error,
        "detached_vs_normal": r.detached_vs_normal,
        "bias_norm": r.bias_norm,
        "plain_bias_norm": r.plain_bias_norm,
        "output_norm": r.output_norm,
        "token_contributions": r.token_contributions.tolist(),
        "singular_values": r.top_singular_values(args.top_k),
        "stable_rank": r.stable_rank.tolist(),
        "compute_s": r.elapsed_s,
        "elapsed_s": time.perf_counter() - start,
        "cache_hit": computed.cache_hit,
    }
    _warn_not_cached(computed)
    if args.json:
        _emit_json(payload, args.json, _stored_note(computed))
        if args.json == "-":
            return 0
    _print_jacobian(payload, args.top_k)
    return 0


def _print_jacobian(p: dict[str, Any], k: int) -> None:
    out = sys.stdout
    out.write(f"model      {p['model']} ({p['family']}) @ {p['revision']}  dtype {p['dtype']}\n")
    out.write(f"output     layer {p['layer']}/{p['n_layers']}{' + final norm' if p['final_norm'] else ''}, last token\n")
    out.write(f"tokens     {len(p['tokens'])}: {' | '.join(repr(t) for t in p['tokens'])}\n")
    out.write(f"reconstruction error  detached {p['reconstruction_error']:.3e}   ordinary {p['plain_reconstruction_error']:.3e}\n")
    out.write(f"detached vs normal output  {p['detached_vs_normal']:.3e}\n")
    out.write(f"||y|| {p['output_norm']:.4g}   bias channel ||b|| {p['bias_norm']:.4g} (ordinary {p['plain_bias_norm']:.4g})\n")
    out.write(f"top-{k} singular values per token:\n")
    width = max(len(repr(t)) for t in p["tokens"])
    for i, (tok, sv) in enumerate(zip(p["tokens"], p["singular_values"])):
        out.write(f"  {i:>3} {tok!r:<{width}}  " + " ".join(f"{v:.3e}" for v in sv) + "\n")
    out.write(f"{'cache hit' if p['cache_hit'] else 'computed'} in {p['elapsed_s']:.2f} s\n")


def _warn_not_cached(computed: Any) -> None:
    """One ``warning:`` line on stderr when the service could not store the result it computed."""
    if getattr(computed, "warning", None):
        sys.stderr.write(f"warning: {computed.warning}\n")


def _run_analysis(args: argparse.Namespace, call: Callable[[Any, Any, _Progress], Any]) -> Any:
    """Run ``call(service, spec, progress)`` with the first-use build note and a tqdm bar."""
    from ..service import get_service

    spec = _spec(args)
    progress = _Progress(not args.quiet)
    try:
        with _first_use_build(spec, args.quiet):
            return call(get_service(), spec, progress)
    finally:
        progress.close()


def _report(args: argparse.Namespace, computed: Any, start: float, body: Callable[[Any, Any], None]) -> int:
    """JSON (``r.summary()`` + timing) to ``--json``; unless that is stdout, the model line, ``body``
    and the timing line as text."""
    r = computed.result
    elapsed = time.perf_counter() - start
    _warn_not_cached(computed)
    if args.json:
        _emit_json({**r.summary(), "elapsed_s": elapsed, "cache_hit": computed.cache_hit}, args.json,
                   _stored_note(computed))
        if args.json == "-":
            return 0
    out = sys.stdout
    out.write(f"model      {r.model} ({r.family}) @ {r.revision}  dtype {r.dtype}\n")
    body(r, out)
    out.write(f"{'cache hit' if computed.cache_hit else 'computed'} in {elapsed:.2f} s\n")
    return 0


def _cell(tokens: list[str], n: int = 5) -> str:
    return " ".join(repr(t) for t in tokens[:n])


def cmd_graph(args: argparse.Namespace) -> int:
    """Exact attribution graph (lldd_core.analysis.graph): lldd's JSON to --json, the Neuronpedia JSON to --neuronpedia."""
    start = time.perf_counter()
    node_threshold = None if args.no_prune else args.node_threshold
    computed = _run_analysis(args, lambda svc, spec, progress: svc.graph(
        spec, args.prompt, target=args.target, node_threshold=node_threshold, edge_threshold=args.edge_threshold,
        max_nodes=args.max_nodes, progress=progress))
    r, elapsed = computed.result, time.perf_counter() - start
    _warn_not_cached(computed)
    if args.neuronpedia:
        _emit_json(r.to_neuronpedia(), args.neuronpedia, _stored_note(computed))
    if args.json:
        _emit_json({**r.to_json(), "elapsed_s": elapsed, "cache_hit": computed.cache_hit}, args.json,
                   _stored_note(computed))
        if args.json == "-":
            return 0
    s, out = r.summary(), sys.stdout
    out.write(f"model      {r.model}; {s['n_tokens']} tokens\n")
    out.write("targets    " + ", ".join(f"{t!r} (p={p:.3f})" for t, p in zip(r.target_tokens, r.target_probs,
                                                                            strict=True)) + "\n")
    out.write(f"graph      {s['nodes']} nodes, {s['edges']} edges, {s['visited']} visited; "
              f"{'pruned' if r.pruned else 'unpruned'} (node {r.node_threshold}, edge {r.edge_threshold}); "
              f"replacement score {r.replacement_score:.4f}\n")
    logits = [i for i, kind in enumerate(r.node_kind) if kind == 3]
    for tok, node in zip(r.target_tokens, logits, strict=True):
        path, score = r.top_path(node)
        out.write(f"top path   into {tok!r}: {' -> '.join(r.node_id(n) for n in path)} (share {score:.3f})\n")
    out.write(f"{'cache hit' if computed.cache_hit else 'computed'} in {elapsed:.2f} s\n")
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    computed = _run_analysis(args, lambda svc, spec, progress: svc.spectrum(
        spec, args.prompt, layer=args.layer, final_norm=not args.no_final_norm, k=args.top_k, n_decode=args.decode,
        method=args.method, progress=progress))

    def body(r, out) -> None:
        out.write(f"output     layer {r.layer}/{r.n_layers}{' + final norm' if r.final_norm else ''}, last token; "
                  f"next token {r.next_token!r}\n")
        out.write(f"method     {r.method}, {r.n_products} operator products, max residual {r.max_residual:.1e}"
                  f"{'' if r.converged else ' (NOT converged)'}\n")
        for i, tok in enumerate(r.tokens):
            se = f" ± {r.stable_rank_se[i]:.2f}" if r.method == "matrix_free" else ""
            out.write(f"[{i}] {tok!r}  stable rank {r.stable_rank[i]:.2f}{se}\n")
            for j in range(r.k):
                out.write(f"    s{j + 1} {r.singular_values[i, j]:9.3e}  U: {_cell(r.u_tokens[i][j])}\n"
                          f"    {'':13} V: {_cell(r.v_tokens[i][j])}\n")

    return _report(args, computed, start, body)


def cmd_layers(args: argparse.Namespace) -> int:
    from ..forward.views import SITES

    start = time.perf_counter()
    sites = tuple(args.sites.split(",")) if args.sites else SITES
    computed = _run_analysis(args, lambda svc, spec, progress: svc.layers(
        spec, args.prompt, k=args.top_k, n_decode=args.decode, lens=not args.no_lens, method=args.method,
        sites=sites, progress=progress))

    def body(r, out) -> None:
        out.write(f"tokens     {' | '.join(repr(t) for t in r.tokens)}\n")
        out.write(f"decoding   {'through the final norm (logit lens)' if r.lens else 'raw stream, W_U u'}; "
                  f"method {r.method}, max residual {r.max_residual:.1e}\n")
        for si, site in enumerate(r.sites):
            out.write(f"{site}: stable rank of the last token, s1, top tokens of u1 (last token)\n")
            for li in range(r.n_layers):
                out.write(f"  layer {li + 1:>3}  stable rank {r.stable_rank[si, li, -1]:7.2f}  "
                          f"s1 {r.singular_values[si, li, -1, 0]:9.3e}  {_cell(r.u_tokens[si][li][-1][0])}\n")

    return _report(args, computed, start, body)


def cmd_gains(args: argparse.Namespace) -> int:
    from ..concepts.files import load_user_file

    start = time.perf_counter()
    dataset = load_user_file(args.dataset) if os.path.isfile(args.dataset) else args.dataset
    sizes = args.sizes  # parsed and checked by ranges.sizes_argtype
    computed = _run_analysis(args, lambda svc, spec, progress: svc.gains(
        spec, dataset, order=args.order, eps=args.eps, n_eval=args.n_eval, complement=args.complement,
        mode=args.mode, sizes=sizes, seed=args.seed, progress=progress))

    def body(r, out) -> None:
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

    return _report(args, computed, start, body)


# --- the scaling sweep -------------------------------------------------------------------------


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
        self.inner = _Progress(enabled)
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
        self.inner = _Progress(self.enabled)
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
        params = _format_params(c.n_params) if c.n_params is not None else "?"
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
    from ..errors import InputError
    from ..service import get_service
    from ..sweep.study import FAMILIES, STATUSES, GainSettings, family_models, parse_list, run_sweep, sweep_status

    start = time.perf_counter()
    models = family_models(args.family) if args.family else parse_list(args.models or "")
    datasets = parse_list(args.datasets)
    if not models:
        raise InputError(f"No models: give --models a,b,c (hub ids, paths, demo:<name>) or --family "
                         f"{'|'.join(FAMILIES)}.")
    if not datasets:
        raise InputError("No datasets: give --datasets x,y (names from the datasets command, or CSV/JSONL files).")
    settings = GainSettings(order=args.order, eps=args.eps, n_eval=args.n_eval, complement=args.complement,
                            mode=args.mode, sizes=args.sizes, seed=args.seed).check()
    like = _spec(args, models[0])
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
        _emit_json({"models": models, "datasets": datasets, "settings": settings.as_dict(), "dtype": args.dtype,
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


def _dataset_arg(value: str | None):
    """A dataset name, or a user file loaded (its fingerprint keys the cache)."""
    from ..concepts.files import load_user_file

    if value is None:
        return None
    return load_user_file(value) if os.path.isfile(value) else value


def cmd_control(args: argparse.Namespace) -> int:
    import numpy as np

    start = time.perf_counter()
    dataset = _dataset_arg(args.dataset)
    computed = _run_analysis(args, lambda svc, spec, progress: svc.control(
        spec, dataset, args.target, order=args.order, complement=args.complement, n_eval=args.n_eval, sizes=args.sizes,
        seed=args.seed, tol=args.tol, progress=progress))

    def body(r, out) -> None:
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

    return _report(args, computed, start, body)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..steering.core import GenerationSettings

    start = time.perf_counter()
    dataset = _dataset_arg(args.dataset)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    layers = args.layer  # a list of integers (ranges.list_argtype); checked against the model by the service
    computed = _run_analysis(args, lambda svc, spec, progress: svc.steer(
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

    return _report(args, computed, start, body)


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..concepts.catalog import format_listing, list_datasets

    rows = list_datasets()
    if args.json:
        _emit_json({"datasets": [r.as_dict() for r in rows]}, args.json)
        if args.json == "-":
            return 0
    sys.stdout.write(format_listing(rows) + "\n")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    """What the model will need, from its config (no weights loaded), and what the device has."""
    import dataclasses

    from ..errors import LLDDError
    from ..models.memory import format_bytes
    from ..service import get_service

    spec = _spec(args)
    service = get_service()
    with _first_use_build(spec, args.quiet):
        service.ensure_demo(spec)
    limit = service.info(spec).max_positions
    if args.tokens is None:
        tokens = 128 if limit is None else min(128, limit)
    else:  # an estimate for more tokens than the model has positions means nothing
        tokens = R.TOKENS.check(args.tokens, hi=limit)
    estimate = service.memory(spec, tokens=tokens)
    if estimate is None:
        raise LLDDError(f"No memory estimate for {spec.model}: its config could not be built on the meta device.")
    if args.json:
        _emit_json({"model": spec.model, "precision": spec.precision, **dataclasses.asdict(estimate),
                    "needed": estimate.needed, "warning": estimate.warning}, args.json)
        if args.json == "-":
            return 0
    out = sys.stdout
    out.write(f"model      {spec.model} ({spec.precision}, device {spec.device}): {estimate.n_params:,} parameters\n")
    for what, n in estimate.rows():
        out.write(f"  {what:<28} {format_bytes(n):>10}\n")
    available = format_bytes(estimate.available) if estimate.available is not None else "unknown"
    out.write(f"needed     ≈ {format_bytes(estimate.needed)} (weights and KV cache); available on {estimate.device}: "
              f"{available}\n")
    if estimate.warning:
        sys.stderr.write(f"warning: {estimate.warning}\n")
    return 0


# --- demo models -------------------------------------------------------------------------------


def select_demos(size: str, arch: str | None) -> list[str]:
    """Names of the demo models ``--size``/``--arch`` ask for, in :data:`DEMO_CONFIGS` order.

    Without ``--arch``, ``--size all`` means every demo model and any other size means GPT-2.
    """
    from ..demo import DEMO_CONFIGS
    from ..errors import InputError

    if arch is None:
        archs = {c.arch for c in DEMO_CONFIGS.values()} if size == "all" else {"gpt2"}
    else:
        archs = {arch}
    names = [n for n, c in DEMO_CONFIGS.items() if c.arch in archs and size in ("all", c.size)]
    if not names:
        sizes = ", ".join(c.size for c in DEMO_CONFIGS.values() if c.arch == arch)
        raise InputError(f"There is no {arch} demo model of size {size}: {arch} comes in {sizes} (or use --size all).")
    return names


def _format_params(n: int) -> str:
    """``1002496`` -> ``"1.00M"``."""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _demo_line(info: DemoInfo, note: str) -> str:
    """One summary line per demo model: what it is and how well it learned the corpus."""
    return (
        f"{info.name:<12} {note:<8} {_format_params(info.parameters):>6} parameters  "
        f"held-out loss {info.heldout_loss:.3f} (unigram {info.unigram_loss:.3f})  "
        f"facts {info.fact_accuracy:.0%}  {info.build_seconds:.1f} s  {info.path}\n"
    )


def _build_one(name: str, seed: int, steps: int | None, quiet: bool) -> DemoInfo:
    """Build demo model ``name`` with a tqdm bar; file-system failures become one-line errors."""
    from ..demo import build_demo

    progress = _Progress(not quiet)
    try:
        with _no_transformers_bars():
            return build_demo(name, seed=seed, steps=steps, progress=progress)
    except OSError as err:  # e.g. a read-only or full disk
        raise _unwritable(name, err) from err
    finally:
        progress.close()


def cmd_demo_build(args: argparse.Namespace) -> int:
    from ..demo import read_info

    for name in select_demos(args.size, args.arch):
        built = read_info(name)
        if built is not None and not args.force:
            # Skipping is the point of a build cache; --force is there to rebuild (e.g. another seed).
            sys.stdout.write(_demo_line(built, "skipped"))
            continue
        info = _build_one(name, args.seed, args.steps, args.quiet)
        sys.stdout.write(_demo_line(info, "built"))
        sys.stdout.flush()  # one line per model as it finishes, also when piped
    return 0


def demo_report() -> dict[str, Any]:
    """Every demo model, built or not, for ``demo info``: ``{"default", "directory", "models"}``."""
    from ..demo import DEFAULT_DEMO, DEMO_CONFIGS, DEMO_PREFIX, demo_dir, demo_path, read_info

    models = []
    for name, cfg in DEMO_CONFIGS.items():
        info = read_info(name)
        entry: dict[str, Any] = {"name": name, "model": DEMO_PREFIX + name, "arch": cfg.arch, "size": cfg.size}
        if info is not None:
            entry.update(asdict(info))
        # where it is now, not where it was built (the folder may have been moved since)
        entry["path"] = str(demo_path(name))
        entry["built"] = info is not None
        models.append(entry)
    return {"default": DEFAULT_DEMO, "directory": str(demo_dir()), "models": models}


def _print_demo_report(report: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(f"demo models in {report['directory']} (* = default)\n")
    out.write(f"  {'name':<13} {'arch':<6} {'size':<7} {'parameters':>10} {'held-out':>9} {'unigram':>8} "
              f"{'facts':>6} {'steps':>6} {'build':>8}\n")
    for m in report["models"]:
        name = m["name"] + (" *" if m["name"] == report["default"] else "")
        head = f"  {name:<13} {m['arch']:<6} {m['size']:<7} "
        if m["built"]:
            out.write(
                head + f"{_format_params(m['parameters']):>10} {m['heldout_loss']:>9.3f} {m['unigram_loss']:>8.3f} "
                f"{m['fact_accuracy']:>6.0%} {m['steps']:>6} {m['build_seconds']:>6.1f} s\n"
            )
        else:
            hint = f"python -m lldd_core demo build --arch {m['arch']} --size {m['size']}"
            out.write(head + f"{'not built':>10}   {hint}\n")


def cmd_demo_info(args: argparse.Namespace) -> int:
    report = demo_report()
    if args.json:
        _emit_json(report, args.json)
        if args.json == "-":
            return 0
    _print_demo_report(report)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from ..store.cache import ResultCache
    from ..store.disk import CacheDamagedError, move_aside
    from ..store.keys import cache_dir

    moved, cache = None, None
    try:
        # No size check here: these commands never evict, and 'clear' is the way out of a too-small limit.
        cache = ResultCache(check_limit=False)
        n = cache.clear() if args.action == "clear" else 0
    except CacheDamagedError:
        if not (args.action == "clear" and args.force):
            raise
        if cache is not None:
            cache.close()
        moved = move_aside(cache_dir())
        cache, n = ResultCache(check_limit=False), 0
    if args.action == "clear":
        payload = {"cleared": n, "directory": str(cache.directory), "moved_aside": str(moved) if moved else None}
        text = f"cleared {n} entries from {cache.directory}\n"
        if moved:
            text = f"moved the damaged database aside to {moved}; {cache.directory} is an empty cache now\n"
    else:
        payload = cache.info()
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(payload["by_kind"].items())) or "none"
        text = (
            f"directory  {payload['directory']}\n"
            f"entries    {payload['entries']} ({kinds})\n"
            f"size       {payload['size_bytes'] / 2**20:.1f} MiB of {payload['size_limit_bytes'] / 2**30:.1f} GiB\n"
        )
    if args.json:
        _emit_json(payload, args.json)
        if args.json == "-":
            return 0
    sys.stdout.write(text)
    return 0


def _add_demo_parser(sub: Any) -> None:
    """``demo build`` and ``demo info``."""
    from ..demo import DEFAULT_DEMO, DEMO_CONFIGS

    archs = sorted({c.arch for c in DEMO_CONFIGS.values()})
    sizes = list(dict.fromkeys(c.size for c in DEMO_CONFIGS.values()))
    demo = sub.add_parser(
        "demo",
        help="build or list the built-in demo models (small models lldd trains itself; nothing is downloaded)",
        description="Demo models are small GPT-2 / Llama models trained by lldd on its own corpus. They are "
        "used as demo:<name> (e.g. --model demo:gpt2-small) and live in $LLDD_DEMO_DIR (default: "
        "demo/ in the result cache folder).",
    )
    actions = demo.add_subparsers(dest="action", required=True)

    p = actions.add_parser(
        "build",
        help="build demo models (already built ones are skipped unless --force)",
        description=f"Build demo models. With no options: {DEFAULT_DEMO}, the default model. "
        "--size all builds every size of --arch, or every demo model without --arch.",
    )
    p.add_argument("--size", choices=[*sizes, "all"], default="small", help="default: %(default)s")
    p.add_argument(
        "--arch",
        choices=archs,
        default=None,
        help="gpt2 (sizes small, medium, large) or llama (small only); default gpt2, or both with --size all",
    )
    _num(p, R.SEED, 0, "seed of corpus, tokenizer, initialization and data order")
    p.add_argument("--force", action="store_true", help="rebuild models that are already built")
    p.add_argument("--steps", type=R.DEMO_STEPS.argtype(), default=None, help=argparse.SUPPRESS)  # quick test builds only
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo_build)

    p = actions.add_parser("info", help="list the demo models: built or not, size, losses, build time")
    p.add_argument("--json", metavar="FILE", default=None, help="write as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=cmd_demo_info)


def _num(p: Any, rng: R.Range, default: Any, what: str, *, default_text: str | None = None) -> None:
    """A numeric option checked by its :class:`~lldd_core.ranges.Range`; the help states the range and default."""
    tail = default_text if default_text is not None else ("none" if default is None else R._fmt(default))
    p.add_argument(rng.option, type=rng.argtype(), default=default, help=f"{what}: {rng.describe()} (default {tail})")


def _sizes(p: argparse.ArgumentParser) -> None:
    """``--sizes`` (checked by :func:`lldd_core.ranges.parse_sizes`; the string default is parsed too)."""
    p.add_argument("--sizes", type=R.sizes_argtype, default="400,200,200", help=f"{R.sizes_help()} (default 400,200,200)")


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals as one ``error:`` line (no usage block), like every other user error.

    Values that start with a minus (``--sizes -1,2,3``, ``--strength -inf``, ``--dy -1e3``) are read as values,
    so that their range check explains them, rather than as unknown options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\.?\d[\d.,eE+\-_]*|inf(inity)?|nan)$", re.IGNORECASE)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # the console script says `lldd`, `python -m lldd_core` says so
    prog = "lldd" if os.path.basename(sys.argv[0] or "") == "lldd" else "python -m lldd_core"
    parser = _Parser(prog=prog, description="Locally linear analysis of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("jacobian", help="detached vs ordinary Jacobian of the last token's output embedding")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    _num(p, R.LAYER, None, "output after K blocks", default_text="L, the last block")
    p.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm to the layer output")
    _num(p, R.TOP_K, 5, "singular values per token to report")
    p.set_defaults(func=cmd_jacobian)

    p = sub.add_parser("graph", help="exact attribution graph of the next-token logits (no transcoders, no error nodes)")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    p.add_argument("--target", default=None, help="one target token, e.g. ' Golden' (default: the top 3 next tokens)")
    p.add_argument("--no-prune", action="store_true", help="keep every node and edge")
    _num(p, R.NODE_THRESHOLD, 0.8, "share of the neurons' influence the kept neurons cover")
    _num(p, R.EDGE_THRESHOLD, 0.98, "share of the edges' influence the kept edges cover")
    _num(p, R.MAX_NODES, 1024, "neurons visited as targets, most influential first")
    p.add_argument("--neuronpedia", metavar="FILE", default=None, help="also write the Neuronpedia graph JSON")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("spectrum", help="top-k singular values of every token's J_i, decoded to tokens")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    _num(p, R.LAYER, None, "output after K blocks", default_text="L, the last block")
    p.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm to the layer output")
    _num(p, R.TOP_K, 8, "singular triplets per token")
    _num(p, R.DECODE, 8, "decoded tokens per singular vector")
    p.add_argument("--method", choices=["auto", "full", "matrix_free"], default="auto",
                   help="full Jacobian or matrix-free top-k SVD (default: auto, by cost)")
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("layers", help="every layer's cumulative, single-block, attention and MLP spectra")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    _num(p, R.TOP_K, 8, "singular triplets per view and token")
    _num(p, R.DECODE, 5, "decoded tokens per singular vector")
    p.add_argument("--no-lens", action="store_true",
                   help="analyse the raw stream (default: through the final norm, logit-lens style)")
    p.add_argument("--sites", default=None, help="comma-separated subset of cumulative,block,attention,mlp")
    p.add_argument("--method", choices=["auto", "full", "matrix_free"], default="auto",
                   help="full Jacobian or matrix-free top-k SVD (default: auto, by cost)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("gains", help="LLV-predicted, measured and exact gain curves of a concept over layers")
    _add_model_args(p)
    p.add_argument("--dataset", required=True,
                   help="a dataset name (see the datasets command) or a CSV/JSONL file with text and label columns")
    _num(p, R.ORDER, 32, "reduced order d of the surrogate")
    _num(p, R.EPS, 0.1, "injection size ε for the measured gains (0.01..0.5 is the useful range)")
    _num(p, R.N_EVAL, 32, "evaluation prompts")
    p.add_argument("--complement", choices=["krylov", "random", "pca"], default="krylov",
                   help="how the basis is completed beyond v_l (default krylov; random and pca are ablations)")
    p.add_argument("--mode", choices=["prompt", "population"], default="prompt",
                   help="each prompt's own Jacobians (default) or the operating prompts' mean reduced model")
    _sizes(p)
    _num(p, R.SEED, 0, "seed of the splits and the random complement")
    p.set_defaults(func=cmd_gains)

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
    _num(p, R.ORDER, 32, "reduced order d of the surrogate")
    _num(p, R.EPS, 0.1, "injection size ε for the measured gains (0.01..0.5 is the useful range)")
    _num(p, R.N_EVAL, 32, "evaluation prompts")
    p.add_argument("--complement", choices=["krylov", "random", "pca"], default="krylov",
                   help="how the basis is completed beyond v_l (default krylov)")
    p.add_argument("--mode", choices=["prompt", "population"], default="prompt",
                   help="each prompt's own Jacobians (default) or the operating prompts' mean reduced model")
    _sizes(p)
    _num(p, R.SEED, 0, "seed of the splits and the random complement")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: cell after cell in this process (default); ray: bases and prompt chunks as tasks on "
                   "a Ray cluster (pip install '.[ray]')")
    g.add_argument("--address", default=None,
                   help="with --engine ray: the cluster ('auto', host:6379 or ray://host:10001); default: start a "
                   "local one")
    _num(g, R.CHUNK_SIZE, 8, "with --engine ray: evaluation prompts per task")
    _num(g, R.GPUS_PER_TASK, None, "with --engine ray: GPUs each task requests",
         default_text="1 if the cluster has GPUs, else 0")
    p.add_argument("--status-only", action="store_true",
                   help="only report what the cache holds (loads no weights, builds nothing)")
    g = p.add_argument_group("models")
    _add_loading_args(g)
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the cells as JSON to FILE ('-' for stdout: then no table)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("control", help="least-energy (LLV) and heuristic multi-layer schedules, validated in the model")
    _add_model_args(p)
    p.add_argument("--dataset", required=True, help="a dataset name or a CSV/JSONL file with text and label columns")
    p.add_argument("--target", type=R.list_argtype(R.TARGET, max_len=R.MAX_TARGETS), default="1.0",
                   help=f"target readout shift(s) Δy, comma-separated, at most {R.MAX_TARGETS}: each "
                   f"{R.TARGET.describe()} (default 1.0)")
    _num(p, R.ORDER, 32, "reduced order of the surrogate")
    p.add_argument("--complement", choices=["krylov", "random", "pca"], default="krylov")
    _num(p, R.N_EVAL, 16, "evaluation prompts the shift is averaged over")
    _num(p, R.TOL, 0.01, "relative tolerance on Δy of the bisection")
    _sizes(p)
    _num(p, R.SEED, 0, "seed of the splits and of the random-layer schedule")
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("steer", help="steered generation beside the unsteered one, with the concept readout")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--method", choices=["additive", "llv", "jacobian", "lqr"], required=True)
    p.add_argument("--dataset", default=None, help="concept dataset (needed except for jacobian; adds the readout)")
    p.add_argument("--layer", type=R.list_argtype(R.STEER_LAYERS), default=None,
                   help=f"additive: block-input layer(s), comma-separated, each {R.STEER_LAYER.describe()}; jacobian: "
                   f"x_layer, {R.JACOBIAN_LAYER.describe()} (default: two thirds of the depth)")
    _num(p, R.STRENGTH, None, "additive α along the unit direction v_l",
         default_text="one class-mean distance ||E_l|| at the layer")
    p.add_argument("--positions", choices=["last", "all"], default="last", help="additive: where to add α v_l")
    _num(p, R.DY, 1.0, "llv: target readout shift Δy")
    _num(p, R.ORDER, 32, "llv: reduced order of the surrogate")
    p.add_argument("--steer-text", default=None, help="jacobian: the steering phrase, e.g. 'The Golden Gate'")
    p.add_argument("--lam", type=R.LAM.argtype(), default=None,
                   help=f"{R.LAM.describe()}, by method: jacobian blend h ← λh + (1-λ)a, {R.LAM_BLEND.describe()} "
                   f"(1 = unsteered; default 0.5); jacobian additive h ← h + λ·a·||h||/(2||a||), "
                   f"{R.LAM_ADDITIVE.describe()} (0 = unsteered); lqr setpoint scale β_k = λ||E_k||, "
                   f"{R.LAM_LQR.describe()} (default 1)")
    p.add_argument("--variant", choices=["blend", "additive"], default="blend", help="jacobian: the paper's blend or "
                   "the reference implementation's norm-matched addition")
    _num(p, R.Q, 10, "lqr: state weight")
    _num(p, R.R, 10, "lqr: control weight")
    _num(p, R.QF, 1, "lqr: terminal state weight")
    _num(p, R.MAX_NEW, 40, "new tokens to generate; the prompt plus these must fit the model's context")
    p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    _num(p, R.TEMPERATURE, 1.0, "with --sample: temperature")
    _num(p, R.TOP_P, 1.0, "with --sample: nucleus top-p")
    _sizes(p)
    _num(p, R.SEED, 0, "sampling seed and split seed")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("memory", help="memory the model will need (weights, KV cache, Jacobians) before loading it")
    _add_model_args(p)
    _num(p, R.TOKENS, None, "prompt length for the KV cache and Jacobian sizes",
         default_text="128, or the model's context if shorter")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("datasets", help="the concept datasets lldd can use: built-in, paper (hub), and whether offline")
    p.add_argument("--json", metavar="FILE", default=None, help="write as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=cmd_datasets)

    _add_demo_parser(sub)

    p = sub.add_parser("cache", help="show or empty the result cache ($LLDD_CACHE_DIR, default ./cache)")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--force", action="store_true",
                   help="clear: if cache.db is damaged, move it aside (cache.db.damaged-<time>) and start an empty cache")
    p.add_argument("--json", metavar="FILE", default=None, help="write as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=cmd_cache)
    return parser


def _one_line(err: BaseException) -> str:
    """An error's message on one line (a message is one line by convention; this keeps it so)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; returns the exit status (see the module doc)."""
    from ..errors import LLDDError

    try:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers.utils import logging as hf_logging  # imports torch: Ctrl-C often lands here

        hf_logging.disable_progress_bar()  # our own bar reports progress; theirs would interleave with it
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help (0), or a refused option: argparse printed its one error line (2)
            return 0 if done.code is None else done.code if isinstance(done.code, int) else EXIT_USER_ERROR
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except LLDDError as err:
        sys.stderr.write(f"error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
