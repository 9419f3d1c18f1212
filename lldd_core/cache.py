"""The on-disk result cache (diskcache), keyed on everything a result depends on.

Key: sha256 of the canonical JSON of the analysis name, the code version, the model id and its
*resolved* revision, the dtype, the input ids and the analysis parameters. Values are bytes from
:func:`lldd_core.results.to_bytes`. A corrupted or unreadable entry is deleted and reported as a
miss, never raised. Location: ``cache/`` (or ``$LLDD_CACHE_DIR``); size limit ``$LLDD_CACHE_SIZE_GB``
(default 4 GB), with least-recently-stored eviction.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import diskcache

from . import __version__
from .results import from_bytes, to_bytes

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "cache"


def cache_dir() -> Path:
    return Path(os.environ.get("LLDD_CACHE_DIR") or DEFAULT_DIR).expanduser()


def size_limit_bytes() -> int:
    try:
        gb = float(os.environ.get("LLDD_CACHE_SIZE_GB", "4"))
    except ValueError:
        gb = 4.0
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


class ResultCache:
    """Results by key; also a small string memo (e.g. hashes of local weight files)."""

    def __init__(self, directory: str | Path | None = None, size_limit: int | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dc = diskcache.Cache(
            str(self.directory),
            size_limit=size_limit if size_limit is not None else size_limit_bytes(),
            eviction_policy="least-recently-stored",
        )

    def get(self, key: str) -> Any | None:
        """The stored result, or ``None`` on a miss or an unreadable entry (which is then dropped)."""
        try:
            blob = self._dc.get(key, default=None)
        except Exception:  # e.g. a pickle-level corruption inside diskcache
            self._discard(key)
            return None
        if blob is None:
            return None
        try:
            if not isinstance(blob, (bytes, bytearray)):
                raise ValueError("not bytes")
            return from_bytes(bytes(blob))
        except ValueError:
            self._discard(key)
            return None

    def set(self, key: str, result: Any) -> None:
        self._dc.set(key, to_bytes(result))

    def _discard(self, key: str) -> None:
        try:
            self._dc.delete(key)
        except Exception:
            pass

    def __contains__(self, key: str) -> bool:
        return key in self._dc

    def keys(self) -> Iterator[str]:
        return iter(self._dc)

    def info(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for key in self._dc:
            kind = str(key).split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return {
            "directory": str(self.directory),
            "entries": len(self._dc),
            "size_bytes": int(self._dc.volume()),
            "size_limit_bytes": int(self._dc.size_limit),
            "by_kind": counts,
        }

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        return int(self._dc.clear())

    def memo(self) -> MutableMapping:
        """A string-to-string mapping stored alongside results (for cheap derived facts)."""
        return _Memo(self._dc)

    def close(self) -> None:
        self._dc.close()


class _Memo(MutableMapping):
    def __init__(self, dc: diskcache.Cache) -> None:
        self._dc = dc

    def __getitem__(self, key: str) -> str:
        value = self._dc.get("memo:" + key, default=None)
        if not isinstance(value, str):
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self._dc.set("memo:" + key, str(value))

    def __delitem__(self, key: str) -> None:
        del self._dc["memo:" + key]

    def __iter__(self) -> Iterator[str]:
        return (k[5:] for k in self._dc if str(k).startswith("memo:"))

    def __len__(self) -> int:
        return sum(1 for _ in self)
