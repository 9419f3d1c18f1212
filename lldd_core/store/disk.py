"""The bytes-only diskcache ``Disk`` and the checked opening of the sqlite database under it.

Trust: anyone who can write the cache folder can plant rows, so reading it must never run code.
:class:`BytesDisk` stores and returns only ``str`` keys and ``bytes``/``str`` values; a row that
diskcache would unpickle (a pickled value or key) is refused, never decoded. Value files are only
read or deleted inside the cache folder. Settings rows lldd does not know are removed before
diskcache reads them (diskcache turns them into attributes, Disk arguments and PRAGMAs), and every
known setting is passed explicitly (:func:`open_diskcache`). A damaged, unwritable or full cache
raises :class:`CacheError` with one line saying what to do (:func:`explain`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import DBNAME, MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from ..errors import LLDDError
from .keys import CacheSettingError

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


class _Refused:
    """What :class:`BytesDisk` returns for a row it will not decode (never a ``str`` or ``bytes``)."""

    def __repr__(self) -> str:
        return "<refused cache row>"


REFUSED = _Refused()


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
FAILURES = (OSError, sqlite3.Error, diskcache.Timeout, ValueError, TypeError, KeyError)


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


def open_diskcache(directory: Path, size_limit: int, check_limit: bool) -> diskcache.Cache:
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
    except FAILURES as err:
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
