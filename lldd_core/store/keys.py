"""Where the result cache lives, how large it may grow, and the key a result is stored under.

Key: sha256 of the canonical JSON of the analysis name, the code version, the model id and its
*resolved* revision, the dtype, the input ids and the analysis parameters. Location: ``cache/`` of
a checkout (or ``$LLDD_CACHE_DIR``); size limit ``$LLDD_CACHE_SIZE_GB`` (default 4 GB).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _default_dir(root: Path = _PACKAGE_PARENT) -> Path:
    """``cache/`` of the checkout when lldd runs from one (the quick start), else the user's cache folder
    (``$XDG_CACHE_HOME/lldd`` or ``~/.cache/lldd``): an installed package never writes into site-packages."""
    if (root / "app.py").is_file() and (root / "cache").is_dir():
        return root / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lldd"


DEFAULT_DIR = _default_dir()
DEFAULT_SIZE_GB = 4.0
#: Largest accepted LLDD_CACHE_SIZE_GB (a petabyte; SQLite stores the limit as a 64-bit integer).
MAX_SIZE_GB = 1e6


class CacheSettingError(InputError):
    """``LLDD_CACHE_SIZE_GB`` is not a usable size, or would evict results that are already stored."""


def cache_dir() -> Path:
    """The cache folder: ``$LLDD_CACHE_DIR``, else :data:`DEFAULT_DIR` (read now, so a changed variable counts)."""
    return Path(os.environ.get("LLDD_CACHE_DIR") or DEFAULT_DIR).expanduser()


def size_limit_bytes() -> int:
    """``$LLDD_CACHE_SIZE_GB`` in bytes (empty or unset: 4 GB); anything else than a positive finite size is refused."""
    text = os.environ.get("LLDD_CACHE_SIZE_GB", "").strip()
    if not text:
        return int(DEFAULT_SIZE_GB * (1 << 30))
    try:
        gb = float(text)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and 0 < gb <= MAX_SIZE_GB):
        raise CacheSettingError(
            f"LLDD_CACHE_SIZE_GB={text[:40]!r} is not a cache size: set it to a number of GB greater than 0 and at "
            f"most {MAX_SIZE_GB:.0e} (e.g. 4), or unset it for the default of {DEFAULT_SIZE_GB:g} GB."
        )
    return int(gb * (1 << 30))


def make_key(
    analysis: str,
    *,
    model: str,
    revision: str,
    dtype: str,
    input_ids: list[int] | None = None,
    params: dict[str, Any] | None = None,
    code_version: str = __version__,
) -> str:
    """sha256 of the canonical JSON of everything the result depends on."""
    payload = {
        "analysis": analysis,
        "code_version": code_version,
        "model": model,
        "revision": revision,
        "dtype": dtype,
        "input_ids": [int(i) for i in (input_ids or [])],
        "params": params or {},
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"{analysis}:" + hashlib.sha256(canonical.encode()).hexdigest()
