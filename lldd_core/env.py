"""``LLDD_*`` environment settings, each read through one helper that refuses garbage in one line.

An unset or empty variable means its default. A value that does not parse (``LLDD_MAX_JACOBIAN_GB=lots``),
is not finite (``nan``, ``inf``) or lies outside its :class:`~lldd_core.ranges.Range` raises an
:class:`~lldd_core.errors.InputError` naming the variable and what it accepts, so the command line
prints ``error: ...`` and a page shows ``st.error`` instead of a traceback from deep inside an analysis.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .ranges import Number, Range, _shown


def _raw(name: str) -> str | None:
    """The variable's text, ``None`` when unset or blank."""
    text = os.environ.get(name)
    return text if text is not None and text.strip() else None


def env_number(name: str, rng: Range, default: Number) -> Number:
    """``$name`` as a number in ``rng``, ``default`` when unset or empty."""
    text = _raw(name)
    if text is None:
        return default
    try:
        return rng.parse(text)
    except InputError:
        raise InputError(f"{name}={_shown(text)} is not valid: set it to {rng.describe()} "
                         f"(default {default}) or unset it.") from None


def env_text(name: str, default: str) -> str:
    """``$name`` stripped of surrounding blanks, ``default`` when unset or blank."""
    text = _raw(name)
    return default if text is None else text.strip()


def env_folder(name: str, default: Path) -> Path:
    """``$name`` as a folder path (``~`` expanded), ``default`` when unset or blank.

    A path that exists but is not a folder is refused (nothing could be written under it); a missing
    one is fine (it is created when first written).
    """
    text = _raw(name)
    path = Path(default if text is None else text.strip()).expanduser()
    if text is not None and path.exists() and not path.is_dir():
        raise InputError(f"{name}={_shown(text)} is not a folder: set it to a folder path (created if missing) "
                         "or unset it.")
    return path
