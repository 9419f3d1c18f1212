"""The on-disk result cache (diskcache), keyed on everything a result depends on.

Key: sha256 of the canonical JSON of the analysis name, the code version, the model id and its
*resolved* revision, the dtype, the input ids and the analysis parameters. Values are bytes from
:func:`lldd_core.store.results.to_bytes`. Location: ``cache/`` (or ``$LLDD_CACHE_DIR``); size limit
``$LLDD_CACHE_SIZE_GB`` (default 4 GB), with least-recently-stored eviction.

Trust: anyone who can write the cache folder can plant rows, so reading it must never run code.
:class:`BytesDisk` stores and returns only ``str`` keys and ``bytes``/``str`` values; a row that
diskcache would unpickle (a pickled value or key) is a miss and is dropped, never decoded. Value
files are only read or deleted inside the cache folder. Settings rows lldd does not know are
removed before diskcache reads them (diskcache turns them into attributes, Disk arguments and
PRAGMAs), and every known setting is passed explicitly. A corrupted or inconsistent entry is a
miss; a damaged, unwritable or full cache raises :class:`CacheError` (the service then computes
anyway and says the result was not stored).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import time
import typing
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
from diskcache.core import DBNAME, MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from .. import __version__
from ..errors import InputError, LLDDError, NumericalError
from .results import from_bytes, to_bytes

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
CLEAR_FORCE = "python -m lldd_core cache clear --force"

_log = logging.getLogger(__name__)

#: Every diskcache setting, given explicitly so that no row of a planted Settings table is used.
#: mmap off: a cache file truncated by another process must not crash this one (SIGBUS).
SETTINGS: dict[str, Any] = {
    **diskcache.DEFAULT_SETTINGS,
    "statistics": 0,
    "tag_index": 0,
    "eviction_policy": "least-recently-stored",
    "cull_limit": 10,
    "sqlite_mmap_size": 0,
    "disk_min_file_size": 2**15,
    "disk_pickle_protocol": 0,
}
#: diskcache's own bookkeeping rows of the Settings table (recomputed when they look wrong).
_METADATA = ("count", "size", "hits", "misses")
_KNOWN_SETTINGS = frozenset(SETTINGS) | frozenset(_METADATA)
#: The names diskcache gives value files: two levels of folders and 28 hex digits.
_VALUE_FILE = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")


class CacheError(LLDDError):
    """The result cache cannot be opened or written (location, permissions, full disk, damage)."""


class CacheDamagedError(CacheError):
    """``cache.db`` is not a readable diskcache database; ``cache clear --force`` moves it aside."""


class CacheSettingError(InputError):
    """``LLDD_CACHE_SIZE_GB`` is not a usable size, or would evict results that are already stored."""


class _Refused:
    """What :class:`BytesDisk` returns for a row it will not decode (never a ``str`` or ``bytes``)."""

    def __repr__(self) -> str:
        return "<refused cache row>"


REFUSED = _Refused()


def cache_dir() -> Path:
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


# --- storage ---------------------------------------------------------------------------------------
class BytesDisk(diskcache.Disk):
    """A diskcache Disk for ``str`` keys and ``bytes``/``str`` values only: it never pickles or unpickles.

    Rows it will not decode (pickled values or keys, unknown modes, value files outside the cache
    folder) come back as :data:`REFUSED`, which :class:`ResultCache` treats as a miss and drops.
    """

    def __init__(self, directory: str, min_file_size: Any = 2**15, pickle_protocol: Any = 0, **_ignored: Any) -> None:
        # The arguments come from Settings rows: a planted value must not break or steer anything.
        size = min_file_size if type(min_file_size) is int and 0 <= min_file_size <= 2**30 else 2**15
        super().__init__(directory, min_file_size=size, pickle_protocol=0)

    def put(self, key: Any) -> tuple[str, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: Any) -> Any:
        return key if raw == 1 and type(key) is str else REFUSED

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple:
        if read or type(value) not in (bytes, str):
            raise TypeError(f"cache values are bytes or str, not {type(value).__name__}")
        return super().store(value, False, key=key)

    def fetch(self, mode: Any, filename: Any, value: Any, read: bool) -> Any:
        if read:
            raise TypeError("lldd reads cache values whole")
        if mode == MODE_RAW:
            return value if type(value) in (bytes, str) else REFUSED
        if mode not in (MODE_BINARY, MODE_TEXT):
            return REFUSED  # MODE_PICKLE (or anything else): never unpickled
        path = self.inside(filename)
        if path is None:
            return REFUSED
        if mode == MODE_BINARY:
            return path.read_bytes()  # an OSError is diskcache's "deleted meanwhile": a miss
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return REFUSED

    def remove(self, file_path: Any) -> None:
        if self.inside(file_path) is not None:  # a planted '/home/…' or '../' name is never deleted
            super().remove(file_path)

    def inside(self, filename: Any) -> Path | None:
        """The value file ``filename`` names, if it is a diskcache value file name inside the cache folder."""
        if not isinstance(filename, str) or not _VALUE_FILE.fullmatch(filename):
            return None
        root = os.path.realpath(self._directory)
        path = os.path.join(self._directory, filename)
        if not os.path.realpath(path).startswith(root + os.sep):  # e.g. a planted symbolic link
            return None
        return Path(path)


def _sqlite_name(err: sqlite3.Error) -> str:
    name = getattr(err, "sqlite_errorname", "") or ""  # Python 3.11+
    if name:
        return name
    text = str(err).lower()
    for needle, guess in (("readonly", "SQLITE_READONLY"), ("unable to open", "SQLITE_CANTOPEN"),
                          ("disk i/o", "SQLITE_IOERR"), ("full", "SQLITE_FULL"), ("locked", "SQLITE_BUSY")):
        if needle in text:
            return guess
    return "SQLITE_CORRUPT"


def explain(err: BaseException, directory: Path) -> CacheError:
    """The one-line :class:`CacheError` for a failure of the cache at ``directory``."""
    db = directory / DBNAME
    if isinstance(err, CacheError):
        return err
    if isinstance(err, diskcache.Timeout):
        return CacheError(f"The result cache {directory} is locked by another process: try again when it has finished.")
    if isinstance(err, OSError):
        detail = err.strerror or type(err).__name__
        if err.errno == 28:  # ENOSPC
            return CacheError(f"The disk of the result cache {directory} is full: free some space or set "
                              "LLDD_CACHE_DIR to a folder on another disk.")
        return CacheError(f"Cannot use {directory} as the result cache ({detail}): set LLDD_CACHE_DIR to a writable folder.")
    detail = " ".join(str(err).split())[:200] or type(err).__name__
    if isinstance(err, sqlite3.Error):
        name = _sqlite_name(err)
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_AUTH")):
            return CacheError(f"Cannot write the result cache {db} ({detail}): set LLDD_CACHE_DIR to a writable folder.")
        if name.startswith("SQLITE_FULL"):
            return CacheError(f"The disk of the result cache {directory} is full: free some space or set "
                              "LLDD_CACHE_DIR to a folder on another disk.")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return CacheError(f"The result cache {directory} is locked by another process: try again when it has finished.")
    return CacheDamagedError(f"The result cache {db} is damaged ({detail}): run '{CLEAR_FORCE}' to move it "
                             f"aside and start an empty cache, or delete {directory}.")


#: What opening the cache can raise for reasons of the files, not of lldd: all become a CacheError.
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout, ValueError, TypeError, KeyError)


def _scrub(directory: Path) -> tuple[int | None, int, int]:
    """Drop what diskcache would decode or obey unsafely: unknown Settings rows, rows that are not
    ``str`` key / bytes-or-text value, and wrong bookkeeping. Reads first; writes only when needed.

    Returns the size limit the cache was last opened with (``None`` for a new cache), its volume in
    bytes and its number of entries.
    """
    db = directory / DBNAME
    if not db.exists():
        return None, 0, 0
    con = sqlite3.connect(str(db), timeout=60, isolation_level=None)
    try:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"Settings", "Cache"} <= tables:
            return None, 0, 0  # a new (or half-created) cache: diskcache creates the tables
        settings = con.execute("SELECT rowid, key, value FROM Settings").fetchall()
        foreign_settings = [rowid for rowid, key, _ in settings if not (type(key) is str and key in _KNOWN_SETTINGS)]
        # diskcache applies sqlite_* rows as PRAGMAs on every new connection, before our values replace them
        wrong_settings = [(key, SETTINGS[key]) for _, key, value in settings
                          if type(key) is str and key in SETTINGS and key != "size_limit" and value != SETTINGS[key]]
        previous = next((v for _, k, v in settings if k == "size_limit" and type(v) is int and v > 0), None)
        foreign_rows = con.execute(
            "SELECT rowid, filename FROM Cache WHERE raw IS NOT 1 OR typeof(key) != 'text' OR mode IS NULL"
            " OR mode NOT IN (?, ?, ?)", (MODE_RAW, MODE_BINARY, MODE_TEXT)).fetchall()
        ((count, size),) = con.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM Cache").fetchall()
        meta = dict(con.execute("SELECT key, value FROM Settings WHERE key IN (?, ?, ?, ?)", _METADATA).fetchall())
        wrong_meta = not (meta.get("count") == count and meta.get("size") == size
                          and all(type(meta.get(k)) is int for k in ("hits", "misses")))
        if foreign_settings or wrong_settings or foreign_rows or wrong_meta:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("DELETE FROM Settings WHERE rowid = ?", [(r,) for r in foreign_settings])
                con.executemany("UPDATE Settings SET value = ? WHERE key = ?", [(v, k) for k, v in wrong_settings])
                con.executemany("DELETE FROM Cache WHERE rowid = ?", [(r,) for r, _ in foreign_rows])
                ((count, size),) = con.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM Cache").fetchall()
                for key, value in (("count", count), ("size", size)):
                    con.execute("DELETE FROM Settings WHERE key = ?", (key,))
                    con.execute("INSERT INTO Settings (key, value) VALUES (?, ?)", (key, value))
                for key in ("hits", "misses"):
                    con.execute("DELETE FROM Settings WHERE key = ? AND typeof(value) != 'integer'", (key,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        ((page_size,),) = con.execute("PRAGMA page_size").fetchall()
        ((page_count,),) = con.execute("PRAGMA page_count").fetchall()
    finally:
        con.close()
    disk = BytesDisk(str(directory))
    for _, filename in foreign_rows:
        disk.remove(filename)
    if foreign_settings or foreign_rows:
        _log.warning("dropped %d settings and %d entries lldd does not read from %s",
                     len(foreign_settings), len(foreign_rows), db)
    return previous, int(page_size * page_count + size), int(count)


def _open(directory: Path, size_limit: int, check_limit: bool) -> diskcache.Cache:
    """The diskcache at ``directory`` with lldd's disk and settings; every failure a :class:`CacheError`.

    A limit lowered below what the cache holds is refused before diskcache stores it (diskcache would
    evict down to it on the next write, here or in any later process); without ``check_limit`` (for
    ``cache info|clear``) the cache opens with its previous limit instead. A cache above an unchanged
    limit is normal: the write that filled it evicts a few entries.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as err:
        raise explain(err, directory) from None
    db = directory / DBNAME
    if (db.exists() or db.is_symlink()) and not db.is_file():
        raise CacheDamagedError(f"The result cache {db} is not a file: run '{CLEAR_FORCE}' to move it aside and "
                                f"start an empty cache, or delete {directory}.")
    try:
        previous, volume, entries = _scrub(directory)
        if previous is not None and size_limit < previous and entries and volume > size_limit:
            if check_limit:
                raise CacheSettingError(
                    f"The result cache {directory} holds {volume / 2**30:.3g} GB, more than "
                    f"LLDD_CACHE_SIZE_GB={size_limit / 2**30:.3g} allows, so stored results would be evicted: set "
                    "LLDD_CACHE_SIZE_GB higher, or empty the cache first with 'python -m lldd_core cache clear'."
                )
            size_limit = previous  # cache info|clear: they never evict, and must not store the lowered limit
        return diskcache.Cache(str(directory), disk=BytesDisk, **{**SETTINGS, "size_limit": size_limit})
    except _FAILURES as err:
        raise explain(err, directory) from None


def move_aside(directory: Path) -> Path | None:
    """Rename a damaged ``cache.db`` (and its -wal/-shm files) to ``cache.db.damaged-<time>``; its new path."""
    db = directory / DBNAME
    if not (db.exists() or db.is_symlink()):
        return None
    target = db.with_name(f"{DBNAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        for suffix in ("-wal", "-shm"):
            side = db.with_name(DBNAME + suffix)
            if side.exists() or side.is_symlink():
                side.rename(target.with_name(target.name + suffix))
        db.rename(target)
    except OSError as err:
        raise explain(err, directory) from None
    return target


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
        self._dc = _open(self.directory, limit, check_limit)

    def _volume(self) -> int:
        try:
            return int(self._dc.volume())
        except _FAILURES as err:
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
        except _FAILURES as err:
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
        except _FAILURES as err:
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
        except _FAILURES as err:
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
        except _FAILURES as err:  # only an optimization: say why and go on
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
