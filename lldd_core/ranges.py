"""The valid range of every numeric setting of the analyses, declared once.

A :class:`Range` names a setting (its keyword, its command-line flag and a few words for messages),
its kind (``int`` or ``float``; floats are always finite) and its bounds, open or closed. From that one
declaration come

* ``check(value)``: the value as its kind, or an :class:`~lldd_core.errors.InputError` whose one line
  states the range (the core's entry points and the service call it, so a Python caller is refused
  like a command-line user);
* ``parse(text)`` and ``argtype()``: the command line's ``type=`` (argparse prints ``error: argument
  --order: must be ...`` and exits 2);
* ``describe()``: the range in words, for ``--help`` and the pages' widget help;
* ``widget()``: ``min_value`` / ``max_value`` of a page's ``st.number_input``.

Bounds that depend on the model (the hidden size, the number of layers, the context) are declared
by name (``hi_name``) and passed as numbers to ``check(value, hi=...)`` once the model's config is
known. Nothing here imports torch: ``--help`` and the pages read it for free.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError

Number = int | float


def _fmt(x: Number) -> str:
    """``1`` -> ``"1"``, ``10000.0`` -> ``"10000"``, ``1e-06`` -> ``"1e-06"``."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e7:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def _shown(value: Any) -> str:
    """How a refused value is quoted in a message: text as typed, numbers as numbers."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, float):
        return _fmt(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Range:
    """One numeric setting and the values it accepts (module doc).

    ``lo``/``hi``: the bounds (``None``: unbounded, or given per model when ``hi_name`` is set);
    ``lo_open``/``hi_open``: whether the bound itself is excluded; ``nonzero``: 0 is refused too.
    ``widget_lo``/``widget_hi``: the nearest value a page's number input offers at an open bound.
    """

    key: str
    label: str
    kind: type = float
    lo: Number | None = None
    hi: Number | None = None
    lo_open: bool = False
    hi_open: bool = False
    nonzero: bool = False
    hi_name: str | None = None
    flag: str | None = None
    widget_lo: Number | None = None
    widget_hi: Number | None = None

    @property
    def option(self) -> str:
        """The command-line flag (``--top-k``)."""
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def title(self) -> str:
        """``The reduced order d (--order)``: how messages name the setting, for pages and the CLI alike."""
        first = self.label[:1]
        return f"{first.upper() if first.isascii() else first}{self.label[1:]} ({self.option})"  # λ stays λ

    # --- words ------------------------------------------------------------------------------------
    def top(self, hi: Number | None = None) -> Number | None:
        """The upper bound in force: the declared one, tightened by ``hi`` (the model's) when given."""
        if hi is None or self.hi is None:
            return self.hi if hi is None else hi
        return min(self.hi, hi)

    def describe(self, hi: Number | None = None) -> str:
        """The accepted values in words: ``an integer from 1 to the hidden size 32``, ``a number in (0, 10]``."""
        nonzero = "non-zero " if self.nonzero else ""
        if self.kind is int:
            return self._describe_int(hi, f"a {nonzero}integer" if nonzero else "an integer")
        top = self.top(hi)
        if self.hi_name is not None:
            top_text = self.hi_name if hi is None else f"{self.hi_name} {_fmt(hi)}"
        else:
            top_text = None if top is None else _fmt(top)
        noun = f"a {nonzero}number"
        if self.lo is not None and top_text is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{noun} in {left}{_fmt(self.lo)}, {top_text}{right}"
        if self.lo is not None:
            return f"{noun} {'greater than' if self.lo_open else 'of at least'} {_fmt(self.lo)}"
        if top_text is not None:
            return f"{noun} {'below' if self.hi_open else 'of at most'} {top_text}"
        return f"a finite {nonzero}number"

    def _describe_int(self, hi: Number | None, noun: str) -> str:
        """Integers read as closed ranges: ``from 0 to the number of layers - 1 (3)``."""
        lo = None if self.lo is None else int(self.lo) + (1 if self.lo_open else 0)
        minus = " - 1" if self.hi_open else ""
        top = self.top(hi)
        if self.hi_name is not None and hi is None:
            upper = f"{self.hi_name}{minus}"
        elif self.hi_name is not None:
            upper = f"{self.hi_name} {_fmt(hi)}" if not self.hi_open else f"{self.hi_name}{minus} ({_fmt(hi - 1)})"
        else:
            upper = None if top is None else _fmt(top - 1 if self.hi_open else top)
        if lo is not None and upper is not None:
            return f"{noun} from {lo} to {upper}"
        if lo is not None:
            return f"{noun} of at least {lo}"
        return f"{noun} of at most {upper}" if upper is not None else noun

    def sentence(self, hi: Number | None = None) -> str:
        """:meth:`describe` as a sentence, for widget help: ``A number in (0, 1].``"""
        words = self.describe(hi)
        return f"{words[0].upper()}{words[1:]}."

    def refusal(self, value: Any, hi: Number | None = None) -> InputError:
        """The error for ``value``: ``The reduced order d (--order) must be ...; got 0.``"""
        return InputError(f"{self.title} must be {self.describe(hi)}; got {_shown(value)}.")

    # --- checking ---------------------------------------------------------------------------------
    def _coerce(self, value: Any) -> Number | None:
        """``value`` as this range's kind, or ``None`` if it is not such a number (bools are not numbers)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
        if self.kind is int:
            if isinstance(value, numbers.Integral):
                return int(value)
            as_float = float(value)
            return int(as_float) if math.isfinite(as_float) and as_float.is_integer() else None
        as_float = float(value)
        return as_float if math.isfinite(as_float) else None

    def contains(self, value: Number, hi: Number | None = None) -> bool:
        """Whether the number ``value`` (already of this kind) lies in the range."""
        top = self.top(hi)
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if top is not None and (value >= top if self.hi_open else value > top):
            return False
        return not (self.nonzero and value == 0)

    def check(self, value: Any, *, hi: Number | None = None) -> Any:
        """``value`` as an ``int`` / finite ``float`` if it lies in the range (``hi``: the model's bound), else
        :class:`InputError` stating the range."""
        number = self._coerce(value)
        if number is None or not self.contains(number, hi):
            raise self.refusal(value, hi)
        return number

    def check_optional(self, value: Any, *, hi: Number | None = None) -> Any:
        """``None`` stays ``None`` (the setting's default applies); anything else as :meth:`check`."""
        return None if value is None else self.check(value, hi=hi)

    def parse(self, text: str, *, hi: Number | None = None) -> Any:
        """A typed value (``"32"``, ``" 0.5 "``) checked; text that is not a number is refused the same way."""
        try:
            number: Number = self.kind(text.strip())
        except (ValueError, TypeError, AttributeError):
            raise self.refusal(text, hi) from None
        if self._coerce(number) is None or not self.contains(number, hi):
            raise self.refusal(text, hi)
        return number

    def argtype(self) -> Callable[[str], Any]:
        """An argparse ``type=`` (bounds that need the model are checked later, by the service)."""

        def parse(text: str) -> Any:
            try:
                return self.parse(text)
            except InputError:
                raise argparse.ArgumentTypeError(f"must be {self.describe()}; got {_shown(text)}") from None

        parse.__name__ = self.key
        parse.range = self  # type: ignore[attr-defined]  (tests find every ranged option by it)
        return parse

    def widget(self, hi: Number | None = None) -> dict[str, Number | None]:
        """``min_value`` / ``max_value`` for ``st.number_input`` (of this range's kind)."""
        top = self.top(hi)
        lo = self.widget_lo if self.lo_open and self.widget_lo is not None else self.lo
        top = self.widget_hi if self.hi_open and self.widget_hi is not None else top
        if self.kind is int:
            if lo is not None and self.lo_open:
                lo = int(lo) + 1
            if top is not None and self.hi_open:
                top = int(top) - 1
            return {"min_value": None if lo is None else int(lo), "max_value": None if top is None else int(top)}
        return {"min_value": None if lo is None else float(lo), "max_value": None if top is None else float(top)}


# --- lists of numbers ------------------------------------------------------------------------------


def parse_list(text: str, rng: Range, *, max_len: int = 64, hi: Number | None = None) -> list:
    """Comma-separated numbers (``"0.5,1,2"``), each checked by ``rng``; at least one, at most ``max_len``."""
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise InputError(f"{rng.title} takes comma-separated numbers, each {rng.describe(hi)}; got {_shown(text)}.")
    if any(not item for item in items):
        raise InputError(f"{rng.title} has an empty entry in {_shown(text)}: separate numbers by single commas.")
    if len(items) > max_len:
        raise InputError(f"{rng.title} takes at most {max_len} numbers; got {len(items)}.")
    return [rng.parse(item, hi=hi) for item in items]


def check_list(values: Sequence[Any], rng: Range, *, max_len: int = 64, hi: Number | None = None) -> list:
    """:func:`parse_list` for numbers already split (the core's entry points)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InputError(f"{rng.title} takes one or more numbers, each {rng.describe(hi)}; got {_shown(values)}.")
    if len(values) > max_len:
        raise InputError(f"{rng.title} takes at most {max_len} numbers; got {len(values)}.")
    return [rng.check(v, hi=hi) for v in values]


def list_argtype(rng: Range, *, max_len: int = 64) -> Callable[[str], list]:
    """An argparse ``type=`` for a comma-separated list of ``rng`` values."""

    def parse(text: str) -> list:
        try:
            return parse_list(text, rng, max_len=max_len)
        except InputError:
            raise argparse.ArgumentTypeError(f"must be up to {max_len} comma-separated numbers, each {rng.describe()}; "
                                             f"got {_shown(text)}") from None

    parse.__name__ = rng.key
    parse.range = rng  # type: ignore[attr-defined]
    return parse


# --- the settings ----------------------------------------------------------------------------------

#: Most examples a dataset file may hold (``lldd_core.concepts.files.MAX_ROWS``); no split can be larger.
MAX_EXAMPLES = 200_000
#: Most new tokens one generation may ask for (the context of the model may allow fewer).
MAX_NEW_TOKENS = 1024

SEED = Range("seed", "the seed", int, 0, 2**32 - 1)
ORDER = Range("order", "the reduced order d", int, 1, hi_name="the hidden size")
EPS = Range("eps", "the injection size ε", float, 0, 10, lo_open=True, widget_lo=1e-4)
N_EVAL = Range("n_eval", "the number of evaluation prompts", int, 1, MAX_EXAMPLES)
SIZES = (
    Range("concept", "the concept split size per class", int, 2, MAX_EXAMPLES, flag="--sizes"),
    Range("operating", "the operating split size per class", int, 1, MAX_EXAMPLES, flag="--sizes"),
    Range("evaluation", "the evaluation split size per class", int, 1, MAX_EXAMPLES, flag="--sizes"),
)

#: Output layer of the Jacobian and spectrum views: ``x_l``, the stream after ``l`` blocks (:mod:`lldd_core.layering`).
LAYER = Range("layer", "the output layer l (x_l)", int, 1, hi_name="the number of layers")
TOP_K = Range("k", "the number of singular triplets k", int, 1, hi_name="the hidden size", flag="--top-k")
DECODE = Range("n_decode", "the number of decoded tokens per vector", int, 1, 50, flag="--decode")
TOKENS = Range("tokens", "the prompt length in tokens", int, 1, hi_name="the model's context")

TARGET = Range("target", "the target readout shift Δy", float, -1e4, 1e4, nonzero=True)
TOL = Range("tol", "the relative tolerance on Δy", float, 0, 1, lo_open=True, hi_open=True, widget_lo=1e-4,
            widget_hi=0.5)
MAX_TARGETS = 16  # as many as the Control page takes (lldd_core.plots.control.MAX_TARGETS)

#: Additive steering: ``x_l`` (block ``l``'s input), ``l = 0..L-1``.
STEER_LAYER = Range("layer", "the additive steering layer", int, 0, hi_name="the number of layers", hi_open=True)
#: What ``steer --layer`` parses before it knows the method (additive ``0..L-1``, jacobian ``1..L``).
STEER_LAYERS = Range("layer", "a steering layer", int, 0, hi_name="the number of layers")
#: Jacobian steering: ``x_l``, the output of block ``l - 1``, ``l = 1..L``.
JACOBIAN_LAYER = Range("layer", "the Jacobian steering layer", int, 1, hi_name="the number of layers")
STRENGTH = Range("strength", "the additive strength α", float, -1e4, 1e4)
#: Calibrated steering (additive α, LLV Δy): the predicted readout shift in class-mean distances ‖E_L‖.
SHIFT = Range("shift", "the calibrated shift in class-mean distances ‖E_L‖", float, -5, 5, nonzero=True)
DY = Range("dy", "the LLV target shift Δy", float, -1e4, 1e4)  # 0: the unsteered text (a check)
#: λ of the Jacobian blend ``h ← λh + (1 − λ)a``: an interpolation (1 = unsteered, 0 = the phrase's image only).
LAM_BLEND = Range("lam", "λ of the blend variant", float, 0, 1)
#: λ of the norm-matched additions (``additive``, ``reference``) ``h ← h + λ a ‖h‖/(2‖a‖)``: 0 = unsteered, |λ| = 2 adds a vector as long
#: as the state itself; beyond ±4 the phrase drowns the text.
LAM_ADDITIVE = Range("lam", "λ of the additive variant", float, -4, 4)
#: LQR setpoints ``β_k = λ‖E_k‖``: in class-mean distances (negative: towards the other class).
LAM_LQR = Range("lam", "the LQR setpoint scale λ", float, -10, 10)
#: Every λ any method accepts (what the command line checks before it knows the method's own range).
LAM = Range("lam", "λ", float, -10, 10)
Q = Range("q", "the LQR state weight q", float, 0, 1e6)
R = Range("r", "the LQR control weight r", float, 1e-6, 1e6)
QF = Range("qf", "the LQR terminal weight q_f", float, 0, 1e6)

#: The Steering lab (:mod:`lldd_core.steering.lab`): evaluation prompts, a knob value before its method's own range
#: is known, the success target (a share of texts) and the fluency budget (perplexity over the unsteered one).
N_PROMPTS = Range("n_prompts", "the number of evaluation prompts", int, 1, 512, flag="--prompts")
SWEEP_STRENGTH = Range("strengths", "a swept strength", float, -1e6, 1e6)
SUCCESS_TARGET = Range("success_target", "the success target (share of texts)", float, 0, 1, lo_open=True,
                       widget_lo=0.01)
FLUENCY_BUDGET = Range("fluency_budget", "the fluency budget (perplexity ÷ the unsteered one)", float, 1, 1e6)

MAX_NEW = Range("max_new_tokens", "the number of new tokens", int, 1, MAX_NEW_TOKENS)
TEMPERATURE = Range("temperature", "the sampling temperature", float, 0.01, 10)
TOP_P = Range("top_p", "top-p", float, 0, 1, lo_open=True, widget_lo=0.01)

CHUNK_SIZE = Range("chunk_size", "the chunk size (evaluation prompts per task)", int, 1, MAX_EXAMPLES)
GPUS_PER_TASK = Range("gpus_per_task", "the GPUs per task", float, 0, 1024)
DEMO_STEPS = Range("steps", "the training steps", int, 1, 10**7)

#: Attribution graphs (``graph``): the share of influence the kept neurons / edges cover, the neurons visited.
NODE_THRESHOLD = Range("node_threshold", "the node threshold (share of influence kept)", float, 0, 1, lo_open=True,
                       widget_lo=0.01)
EDGE_THRESHOLD = Range("edge_threshold", "the edge threshold (share of edge influence kept)", float, 0, 1,
                       lo_open=True, widget_lo=0.01)
MAX_NODES = Range("max_nodes", "the number of neurons visited", int, 1, 1_000_000)

#: ``LLDD_MAX_JACOBIAN_GB``: the largest full Jacobian an analysis forms (GiB).
MAX_JACOBIAN_GB = Range("max_jacobian_gb", "the full-Jacobian memory limit in GiB", float, 0, 1e6, lo_open=True,
                        widget_lo=0.01)


def lam_range(method: str, variant: str = "blend") -> Range:
    """λ's range for a steering method (and the Jacobian method's variant)."""
    if method == "lqr":
        return LAM_LQR
    return LAM_BLEND if variant == "blend" else LAM_ADDITIVE  # additive and reference: norm-matched additions


def parse_sizes(text: str) -> tuple[int, int, int]:
    """``"400,200,200"`` -> per-class concept, operating and evaluation split sizes, each checked."""
    items = [part.strip() for part in str(text).split(",")]
    if len(items) != 3 or not all(items):
        raise InputError("--sizes takes three whole numbers per class: concept,operating,evaluation "
                         f"(e.g. 400,200,200); got {_shown(text)}.")
    return tuple(rng.parse(item) for rng, item in zip(SIZES, items))  # type: ignore[return-value]


def check_sizes(sizes: Sequence[Any]) -> tuple[int, int, int]:
    """Split sizes from the core's callers: three numbers, each in its split's range."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) != 3:
        raise InputError("The split sizes are three whole numbers per class: concept, operating, evaluation "
                         f"(e.g. 400,200,200); got {_shown(sizes)}.")
    return tuple(rng.check(n) for rng, n in zip(SIZES, sizes))  # type: ignore[return-value]


def sizes_argtype(text: str) -> tuple[int, int, int]:
    """argparse ``type=`` of ``--sizes``."""
    try:
        return parse_sizes(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be {sizes_help()[len('per-class '):]} (e.g. 400,200,200); "
                                         f"got {_shown(text)}") from None


sizes_argtype.range = SIZES[0]  # type: ignore[attr-defined]


def sizes_help() -> str:
    """What ``--sizes`` accepts, for its help."""
    return ("per-class concept,operating,evaluation split sizes: three comma-separated integers, the concept one "
            f"from {SIZES[0].lo}, the others from 1, each at most {MAX_EXAMPLES}")
