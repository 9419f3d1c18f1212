"""What every command shares: model options, the progress bar, JSON output, the first-use build note,
the numeric options checked by their :class:`~lldd_core.ranges.Range`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import ranges as R

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    from ..concepts.data import ConceptData
    from ..models.loading import ModelSpec

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..models.loading import default_model

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default_model(),
        help="hub id (org/name), local directory, or demo:<name> for a built-in demo model (default: %(default)s)",
    )
    g.add_argument("--revision", default=None, help="branch, tag or commit of a hub model")
    add_loading_args(g)
    p.add_argument("--json", metavar="FILE", default=None, help="write the result as JSON to FILE ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_loading_args(g: argparse._ArgumentGroup) -> None:
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


def model_spec(args: argparse.Namespace, model: str | None = None) -> ModelSpec:
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


class Progress:
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


def finite(x: Any) -> Any:
    """JSON has no NaN/Inf: map them to None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [finite(v) for v in x]
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    return x


#: What a failed ``--json`` write adds when the result itself is safe in the cache.
IN_CACHE = "The result is stored in the cache: run the same command with a writable --json path to get it at once."


def emit_json(payload: dict[str, Any], target: str, note: str = "") -> None:
    """``payload`` as JSON to stdout (``-``) or the file ``target``; a file that cannot be written is one
    :class:`~lldd_core.errors.LLDDError` line (``note`` says where the result is meanwhile)."""
    from ..errors import LLDDError

    text = json.dumps(finite(payload), indent=2)
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


def stored_note(computed: Any) -> str:
    """:data:`IN_CACHE` unless the service said it could not store the result."""
    return "" if getattr(computed, "warning", None) else IN_CACHE


@contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Silence transformers' own tqdm bars (e.g. "Writing model shards") so only ours shows."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def unwritable(name: str, err: OSError) -> Exception:
    """A failed demo build for lack of a writable disk: the user's environment, not a bug."""
    from ..demo import demo_dir
    from ..errors import LLDDError

    return LLDDError(
        f"Could not write the demo model {name} to {demo_dir()}: {err.strerror or err}. "
        "Set LLDD_DEMO_DIR to a writable folder with some free space."
    )


@contextmanager
def first_use_build(spec: ModelSpec, quiet: bool) -> Iterator[None]:
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
        with no_transformers_bars():
            yield
    except OSError as err:
        raise unwritable(spec.model, err) from err

def warn_not_cached(computed: Any) -> None:
    """One ``warning:`` line on stderr when the service could not store the result it computed."""
    if getattr(computed, "warning", None):
        sys.stderr.write(f"warning: {computed.warning}\n")


def run_analysis(args: argparse.Namespace, call: Callable[[Any, Any, Progress], Any]) -> Any:
    """Run ``call(service, spec, progress)`` with the first-use build note and a tqdm bar."""
    from ..service import get_service

    spec = model_spec(args)
    progress = Progress(not args.quiet)
    try:
        with first_use_build(spec, args.quiet):
            return call(get_service(), spec, progress)
    finally:
        progress.close()


def report(args: argparse.Namespace, computed: Any, start: float, body: Callable[[Any, Any], None]) -> int:
    """JSON (``r.summary()`` + timing) to ``--json``; unless that is stdout, the model line, ``body``
    and the timing line as text."""
    r = computed.result
    elapsed = time.perf_counter() - start
    warn_not_cached(computed)
    if args.json:
        emit_json({**r.summary(), "elapsed_s": elapsed, "cache_hit": computed.cache_hit}, args.json,
                   stored_note(computed))
        if args.json == "-":
            return 0
    out = sys.stdout
    out.write(f"model      {r.model} ({r.family}) @ {r.revision}  dtype {r.dtype}\n")
    body(r, out)
    out.write(f"{'cache hit' if computed.cache_hit else 'computed'} in {elapsed:.2f} s\n")
    return 0


def cell_text(tokens: list[str], n: int = 5) -> str:
    return " ".join(repr(t) for t in tokens[:n])

def dataset_arg(value: str | None) -> str | ConceptData | None:
    """A dataset name, or a user file loaded (its fingerprint keys the cache)."""
    from ..concepts.files import load_user_file

    if value is None:
        return None
    return load_user_file(value) if os.path.isfile(value) else value

def format_params(n: int) -> str:
    """``1002496`` -> ``"1.00M"``."""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"

def number_option(p: Any, rng: R.Range, default: Any, what: str, *, default_text: str | None = None) -> None:
    """A numeric option checked by its :class:`~lldd_core.ranges.Range`; the help states the range and default."""
    tail = default_text if default_text is not None else ("none" if default is None else R._fmt(default))
    p.add_argument(rng.option, type=rng.argtype(), default=default, help=f"{what}: {rng.describe()} (default {tail})")


def sizes_option(p: argparse.ArgumentParser) -> None:
    """``--sizes`` (checked by :func:`lldd_core.ranges.parse_sizes`; the string default is parsed too)."""
    from ..analysis.settings import SplitSizes

    default = SplitSizes().text()
    p.add_argument("--sizes", type=R.sizes_argtype, default=default, help=f"{R.sizes_help()} (default {default})")
