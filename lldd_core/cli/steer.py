"""Steered generation beside the unsteered one: ``steer``.

``--method`` offers the registered steering methods (:mod:`lldd_core.steering.methods.registry`); each
method's options come from the fields of its ``Params`` (:func:`~lldd_core.steering.methods.base.option`).
Methods that share a flag (``--layer``, ``--lam``) must declare it alike (the same range, choices and
default): the flag is added once, its help says what it means for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING, Any, TextIO

from .. import ranges as R
from .common import add_model_args, dataset_arg, number_option, report, run_analysis, sizes_option

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    import numpy as np

    from ..steering.compare import SteeringResult


@dataclasses.dataclass
class _Flag:
    """One method option on the command line: the fields of every method that declares it."""

    flag: str
    uses: list[tuple[str, dataclasses.Field, Any]]  # (method name, field, Option)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add(self, p: argparse.ArgumentParser) -> None:
        _, field, opt = self.uses[0]
        if opt.range is not None:
            kind = R.list_argtype(opt.range) if opt.many else opt.range.argtype()
            p.add_argument(self.flag, dest=self.dest, type=kind, default=field.default, help=self.help())
        else:
            choices = list(opt.choices) if opt.choices else None
            p.add_argument(self.flag, dest=self.dest, choices=choices, default=field.default, help=self.help())

    def help(self) -> str:
        """``method: words: range (default ...)`` for one method; ``range, by method: a: ...; b: ...`` for several."""
        name, field, opt = self.uses[0]
        rng = opt.range
        if len(self.uses) == 1:
            if rng is None:
                return f"{name}: {opt.help}" + (f" (default {opt.default_text})" if opt.default_text else "")
            words = f"comma-separated, each {rng.describe()}" if opt.many else rng.describe()
            tail = opt.default_text or ("none" if field.default is None else R._fmt(field.default))
            return f"{name}: {opt.help}: {words} (default {tail})"
        defaults = {o.default_text for _, _, o in self.uses}
        shared = defaults.pop() if len(defaults) == 1 else None
        parts = [f"{m}: {o.help}" + (f" (default {o.default_text})" if o.default_text and not shared else "")
                 for m, _, o in self.uses]
        head = f"{rng.describe()}, by method: " if rng is not None and not opt.many else ""
        return head + "; ".join(parts) + (f" (default: {shared})" if shared else "")


def method_flags() -> list[_Flag]:
    """Every registered method's options, one :class:`_Flag` per flag in first-declared order; a flag two
    methods declare differently is a programming error (``ValueError``)."""
    from ..steering.methods.base import options
    from ..steering.methods.registry import get, names

    flags: dict[str, _Flag] = {}
    for name in names():
        for field, opt in options(get(name).Params):
            flag = opt.flag(field.name)
            known = flags.setdefault(flag, _Flag(flag, []))
            if known.uses:
                _, first, first_opt = known.uses[0]
                same = (first_opt.range, first_opt.many, first_opt.choices, first.default)
                if same != (opt.range, opt.many, opt.choices, field.default):
                    raise ValueError(f"steering methods {known.uses[0][0]!r} and {name!r} declare {flag} differently")
            known.uses.append((name, field, opt))
    return list(flags.values())


def method_params(method: str, args: argparse.Namespace) -> Any:
    """The ``Params`` of ``method`` from the command line (built once, passed down whole)."""
    from ..steering.methods.base import options
    from ..steering.methods.registry import get

    chosen = get(method)
    values = {field.name: getattr(args, opt.flag(field.name).removeprefix("--").replace("-", "_"))
              for field, opt in options(chosen.Params)}
    return chosen.Params(**values)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..steering.generate import GenerationSettings

    start = time.perf_counter()
    dataset = dataset_arg(args.dataset)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    params = method_params(args.method, args)  # layers, λ, ...: checked against the model by the service
    computed = run_analysis(args, lambda svc, spec, progress: svc.steer(
        spec, args.prompt, args.method, params, dataset=dataset, settings=settings, sizes=args.sizes, seed=args.seed,
        progress=progress))

    def body(r: SteeringResult, out: TextIO) -> None:
        out.write(f"method     {r.method}  {r.params}\n")
        out.write(f"prompt     {r.prompt!r}\n")
        out.write(f"unsteered  {r.unsteered!r}\n")
        out.write(f"steered    {r.steered!r}\n")
        if r.readout_unsteered.size or r.readout_steered.size:
            def mean(x: np.ndarray) -> str:
                return f"{x.mean():.3f}" if x.size else "-"

            out.write(f"readout    mean over generated tokens ({r.dataset}): unsteered {mean(r.readout_unsteered)}, "
                      f"steered {mean(r.readout_steered)}\n")

    return report(args, computed, start, body)


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    from ..steering.methods.registry import get, names

    p = sub.add_parser("steer", help="steered generation beside the unsteered one, with the concept readout")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--method", choices=list(names()), required=True)
    optional = [name for name in names() if not get(name).needs_dataset]
    p.add_argument("--dataset", default=None, help="concept dataset (needed"
                   + (f" except for {', '.join(optional)}" if optional else "") + "; adds the readout)")
    for flag in method_flags():
        flag.add(p)
    number_option(p, R.MAX_NEW, 40, "new tokens to generate; the prompt plus these must fit the model's context")
    p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    number_option(p, R.TEMPERATURE, 1.0, "with --sample: temperature")
    number_option(p, R.TOP_P, 1.0, "with --sample: nucleus top-p")
    sizes_option(p)
    number_option(p, R.SEED, 0, "sampling seed and split seed")
    p.set_defaults(func=cmd_steer)
