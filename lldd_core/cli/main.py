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
    python -m lldd_core steer-sweep --dataset D --method additive,llv --layers 2,3 --strengths 0,4,16 --prompts N
                                                                     the Steering lab: success and cost per setting
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
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import gains, lab, resources, spectra, steer, sweep
from .common import EXIT_INTERRUPTED, EXIT_USER_ERROR


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
    """Every command, each group's parsers added by its module's ``register``."""
    # the console script says `lldd`, `python -m lldd_core` says so
    prog = "lldd" if os.path.basename(sys.argv[0] or "") == "lldd" else "python -m lldd_core"
    parser = _Parser(prog=prog, description="Locally linear analysis of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (spectra, gains, sweep, steer, lab, resources):
        group.register(sub)
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
