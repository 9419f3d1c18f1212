"""The result cache: results by key on the bytes-only disk, checked before they are stored or shown.

Values are bytes from :func:`lldd_core.store.results.to_bytes`, stored under :func:`.keys.make_key`
on :class:`.disk.BytesDisk` with least-recently-stored eviction. A corrupted or inconsistent entry
is a miss and is dropped; a damaged, unwritable or full cache raises :class:`CacheError` (the
service then computes anyway and says the result was not stored); a cache that cannot be opened
at all is an :class:`UnavailableCache`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LLDDError, NumericalError
from .disk import FAILURES, CacheError, explain, open_diskcache
from .keys import CacheSettingError, cache_dir, size_limit_bytes
from .results import from_bytes, to_bytes

_log = logging.getLogger(__name__)


# --- validation ------------------------------------------------------------------------------------
@functools.cache
def _array_fields(cls: type) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` annotated ``np.ndarray``."""
    if not dataclasses.is_dataclass(cls):
        return ()
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  (unresolvable annotations: nothing generic to check)
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if hints.get(f.name) is np.ndarray)


def result_problem(result: Any) -> str | None:
    """Why ``result`` is clearly corrupt, or ``None``.

    Generic: every field annotated ``np.ndarray`` holds an array (NaN stays allowed: a correlation of
    a constant curve or an unreached target's energy is NaN by meaning). Types that know their
    invariants (shapes, finiteness) add a ``validate()`` that raises ``ValueError``.
    """
    for name in _array_fields(type(result)):
        if not isinstance(getattr(result, name), np.ndarray):
            return f"{name} is {type(getattr(result, name)).__name__}, not an array"
    validate = getattr(result, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, TypeError, IndexError) as err:
            return str(err) or type(err).__name__
    return None


def check_result(result: Any) -> None:
    """Raise :class:`NumericalError` if ``result`` is clearly corrupt (then it is neither shown nor stored)."""
    problem = result_problem(result)
    if problem is not None:
        raise NumericalError(
            f"The {type(result).__name__} failed its consistency check ({problem}), so it is not shown or cached: "
            "try float64 or other parameters, and report this as a bug in lldd."
        )



class ResultCache:
    """Results by key; also a small string memo (e.g. hashes of local weight files).

    Raises :class:`CacheError` when the location cannot be used, :class:`CacheSettingError` for a
    bad ``LLDD_CACHE_SIZE_GB`` or one lowered below what is stored already (unless ``check_limit``
    is off, as for ``cache info|clear``, which never evict).
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int | None = None, *,
                 check_limit: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir()
        limit = size_limit if size_limit is not None else size_limit_bytes()
        self._dc = open_diskcache(self.directory, limit, check_limit)

    def _volume(self) -> int:
        try:
            return int(self._dc.volume())
        except FAILURES as err:
            raise explain(err, self.directory) from None

    def get(self, key: str) -> Any | None:
        """The stored result, or ``None`` on a miss or an unreadable entry (which is then dropped)."""
        try:
            blob = self._dc.get(key, default=None)
        except Exception:  # noqa: BLE001  (a damaged row or database: a miss, never a crash)
            self._discard(key)
            return None
        if blob is None:
            return None
        try:
            if type(blob) is not bytes:
                raise ValueError("not bytes")
            result = from_bytes(blob)
            if result_problem(result) is not None:
                raise ValueError("inconsistent result")
            return result
        except ValueError:
            self._discard(key)
            return None

    def set(self, key: str, result: Any) -> None:
        """Validate (:func:`check_result`) and store ``result``; :class:`CacheError` if it could not be stored."""
        check_result(result)
        blob = to_bytes(result)
        if len(blob) >= self._dc.size_limit:
            raise CacheError(f"The result ({len(blob) / 2**20:.1f} MiB) is larger than the cache's size limit "
                             f"({self._dc.size_limit / 2**20:.1f} MiB): raise LLDD_CACHE_SIZE_GB to keep it.")
        try:
            self._dc.set(key, blob)
            stored = key in self._dc
        except FAILURES as err:
            raise explain(err, self.directory) from None
        if not stored:
            raise CacheError(f"The result was evicted at once by the cache's size limit "
                             f"({self._dc.size_limit / 2**20:.1f} MiB): raise LLDD_CACHE_SIZE_GB to keep it.")

    def _discard(self, key: str) -> None:
        try:
            self._dc.delete(key)
        except Exception as err:  # noqa: BLE001  (best effort: a read-only or damaged cache keeps the row)
            _log.debug("could not drop %s: %s", key, err)

    def __contains__(self, key: str) -> bool:
        try:
            return key in self._dc
        except Exception:  # noqa: BLE001
            return False

    def keys(self) -> Iterator[str]:
        """The keys lldd can read (rows it refuses are skipped); :class:`CacheError` if the database is damaged."""
        try:
            found = [key for key in self._dc if type(key) is str]
        except FAILURES as err:
            raise explain(err, self.directory) from None
        return iter(found)

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def info(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        keys = list(self.keys())
        for key in keys:
            kind = key.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return {
            "directory": str(self.directory),
            "entries": len(keys),
            "size_bytes": self._volume(),
            "size_limit_bytes": int(self._dc.size_limit),
            "by_kind": counts,
        }

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        try:
            return int(self._dc.clear())
        except FAILURES as err:
            raise explain(err, self.directory) from None

    def memo(self) -> MutableMapping:
        """A string-to-string mapping stored alongside results (for cheap derived facts)."""
        return _Memo(self)

    def close(self) -> None:
        self._dc.close()


class _Memo(MutableMapping):
    """Derived facts by name; a fact that cannot be read is missing, one that cannot be stored is recomputed later."""

    def __init__(self, cache: ResultCache) -> None:
        self._cache = cache
        self._dc = cache._dc

    def __getitem__(self, key: str) -> str:
        try:
            value = self._dc.get("memo:" + key, default=None)
        except Exception:  # noqa: BLE001
            value = None
        if type(value) is not str:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        try:
            self._dc.set("memo:" + key, str(value))
        except FAILURES as err:  # only an optimization: say why and go on
            _log.info("memo %s not stored: %s", key, explain(err, self._cache.directory))

    def __delitem__(self, key: str) -> None:
        del self._dc["memo:" + key]

    def __iter__(self) -> Iterator[str]:
        return (k[5:] for k in self._cache if k.startswith("memo:"))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class UnavailableCache:
    """Stands in for a result cache that could not be opened: nothing is found or stored.

    For a refused setting (:class:`CacheSettingError`) every lookup raises it, so analyses are
    refused with its message; for any other :class:`CacheError` lookups miss and :meth:`set` raises
    the error, which the service turns into a "not stored" warning beside the result.
    """

    def __init__(self, error: LLDDError, directory: Path) -> None:
        self.error = error
        self.directory = directory
        self._memo: dict[str, str] = {}

    def get(self, key: str) -> Any | None:
        if isinstance(self.error, CacheSettingError):
            raise self.error
        return None

    def set(self, key: str, result: Any) -> None:
        check_result(result)
        raise self.error

    def __contains__(self, key: str) -> bool:
        return False

    def keys(self) -> Iterator[str]:
        return iter(())

    def info(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "entries": 0, "size_bytes": 0, "size_limit_bytes": 0,
                "by_kind": {}, "problem": str(self.error)}

    def clear(self) -> int:
        return 0

    def memo(self) -> MutableMapping:
        return self._memo

    def close(self) -> None:
        pass


def open_cache() -> ResultCache | UnavailableCache:
    """The configured result cache, or an :class:`UnavailableCache` that carries why it cannot be used."""
    try:
        return ResultCache()
    except (CacheError, CacheSettingError) as err:
        return UnavailableCache(err, cache_dir())
