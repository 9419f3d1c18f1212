"""``python -m lldd_core``: scripted and batch runs of the analyses, and cache management.

Every analysis command takes ``--model``, ``--revision``, ``--dtype``, ``--device`` and ``--json``.
Errors a user can cause print one line on stderr and exit with status 2; progress goes to stderr
(tqdm), results to stdout or the ``--json`` file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USER_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEVICE_CHOICES, DTYPES, default_model

    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model(), help="hub id (org/name) or local directory (default: %(default)s)")
    g.add_argument("--revision", default=None, help="branch, tag or commit of a hub model")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES), help="default: %(default)s")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or a torch device (default: auto)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository to run")
    g.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin) weights; safetensors only otherwise")
    p.add_argument("--json", metavar="FILE", default=None, help="write the result as JSON to FILE ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _spec(args: argparse.Namespace):
    from .models import ModelSpec

    return ModelSpec(
        model=args.model,
        revision=args.revision,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
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
            self.bar.set_description_str(message[:40])
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


def _emit_json(payload: dict[str, Any], target: str) -> None:
    text = json.dumps(_finite(payload), indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


# --- commands ----------------------------------------------------------------------------------


def cmd_jacobian(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .service import get_service

    if args.top_k < 1:
        raise InputError("--top-k must be at least 1.")
    start = time.perf_counter()
    progress = _Progress(not args.quiet)
    try:
        computed = get_service().jacobian(_spec(args), args.prompt, layer=args.layer, final_norm=not args.no_final_norm, progress=progress)
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
    if args.json:
        _emit_json(payload, args.json)
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
        out.write(f"  {i:>3} {repr(tok):<{width}}  " + " ".join(f"{v:.3e}" for v in sv) + "\n")
    out.write(f"{'cache hit' if p['cache_hit'] else 'computed'} in {p['elapsed_s']:.2f} s\n")


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import ResultCache

    cache = ResultCache()
    if args.action == "clear":
        n = cache.clear()
        payload = {"cleared": n, "directory": str(cache.directory)}
        text = f"cleared {n} entries from {cache.directory}\n"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lldd_core", description="Locally linear analysis of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("jacobian", help="detached vs ordinary Jacobian of the last token's output embedding")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    p.add_argument("--layer", type=int, default=None, help="output after K blocks, 1..L (default L)")
    p.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm to the layer output")
    p.add_argument("--top-k", type=int, default=5, help="singular values per token to report (default 5)")
    p.set_defaults(func=cmd_jacobian)

    p = sub.add_parser("cache", help="show or empty the result cache ($LLDD_CACHE_DIR, default ./cache)")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--json", metavar="FILE", default=None, help="write as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from .errors import LLDDError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LLDDError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
