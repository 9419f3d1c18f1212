"""What lldd works with: ``datasets``, ``memory``, ``demo build|info``, ``cache info|clear``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .. import ranges as R
from .common import (
    Progress,
    add_model_args,
    emit_json,
    first_use_build,
    format_params,
    model_spec,
    no_transformers_bars,
    number_option,
    unwritable,
)

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    from ..demo import DemoInfo


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..concepts.catalog import format_listing, list_datasets

    rows = list_datasets()
    if args.json:
        emit_json({"datasets": [r.as_dict() for r in rows]}, args.json)
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

    spec = model_spec(args)
    service = get_service()
    with first_use_build(spec, args.quiet):
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
        emit_json({"model": spec.model, "precision": spec.precision, **dataclasses.asdict(estimate),
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

def _demo_line(info: DemoInfo, note: str) -> str:
    """One summary line per demo model: what it is and how well it learned the corpus."""
    return (
        f"{info.name:<12} {note:<8} {format_params(info.parameters):>6} parameters  "
        f"held-out loss {info.heldout_loss:.3f} (unigram {info.unigram_loss:.3f})  "
        f"facts {info.fact_accuracy:.0%}  {info.build_seconds:.1f} s  {info.path}\n"
    )


def _build_one(name: str, seed: int, steps: int | None, quiet: bool) -> DemoInfo:
    """Build demo model ``name`` with a tqdm bar; file-system failures become one-line errors."""
    from ..demo import build_demo

    progress = Progress(not quiet)
    try:
        with no_transformers_bars():
            return build_demo(name, seed=seed, steps=steps, progress=progress)
    except OSError as err:  # e.g. a read-only or full disk
        raise unwritable(name, err) from err
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
                head + f"{format_params(m['parameters']):>10} {m['heldout_loss']:>9.3f} {m['unigram_loss']:>8.3f} "
                f"{m['fact_accuracy']:>6.0%} {m['steps']:>6} {m['build_seconds']:>6.1f} s\n"
            )
        else:
            hint = f"python -m lldd_core demo build --arch {m['arch']} --size {m['size']}"
            out.write(head + f"{'not built':>10}   {hint}\n")


def cmd_demo_info(args: argparse.Namespace) -> int:
    report = demo_report()
    if args.json:
        emit_json(report, args.json)
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
        emit_json(payload, args.json)
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
    number_option(p, R.SEED, 0, "seed of corpus, tokenizer, initialization and data order")
    p.add_argument("--force", action="store_true", help="rebuild models that are already built")
    p.add_argument("--steps", type=R.DEMO_STEPS.argtype(), default=None, help=argparse.SUPPRESS)  # quick test builds only
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo_build)

    p = actions.add_parser("info", help="list the demo models: built or not, size, losses, build time")
    p.add_argument("--json", metavar="FILE", default=None, help="write as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=cmd_demo_info)


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("memory", help="memory the model will need (weights, KV cache, Jacobians) before loading it")
    add_model_args(p)
    number_option(p, R.TOKENS, None, "prompt length for the KV cache and Jacobian sizes",
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
