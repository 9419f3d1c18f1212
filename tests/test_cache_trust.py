"""The result cache under hostile files and settings: it never runs code, never loses results in silence.

Rows are planted with sqlite3 straight into ``cache.db``, as anyone who can write a shared cache
folder could. A planted pickle would create a marker file when unpickled; it must stay a miss.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lldd_core import service as service_module
from lldd_core.analysis.jacobian import JacobianResult
from lldd_core.cli.main import main
from lldd_core.errors import NumericalError
from lldd_core.models.loading import ModelSpec
from lldd_core.store import disk as disk_module
from lldd_core.store.cache import ResultCache, UnavailableCache
from lldd_core.store.disk import BytesDisk, CacheDamagedError, CacheError
from lldd_core.store.keys import CacheSettingError, size_limit_bytes
from lldd_core.store.results import to_bytes
from tests.apptest import APP, open_page
from tests.hostile import refuse
from tests.test_results import Toy
from tests.tiny import PROMPT

MODE_RAW, MODE_BINARY, MODE_TEXT, MODE_PICKLE = 1, 2, 3, 4


class Trap:
    """Unpickling this creates ``marker`` (what a hostile row would do with a worse command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled-marker"


@pytest.fixture()
def trap(marker: Path, tmp_path: Path) -> bytes:
    """A pickle that creates ``marker``; checked to really work on a decoy first."""
    decoy = tmp_path / "decoy"
    pickle.loads(pickle.dumps(Trap(decoy)))
    assert decoy.exists()
    return pickle.dumps(Trap(marker))


def plant(db: Path, key, *, raw=1, mode=MODE_RAW, value=None, filename=None) -> None:
    """One Cache row written directly, bypassing lldd and diskcache."""
    con = sqlite3.connect(db)
    now = time.time()
    con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
                " filename, value) VALUES (?, ?, ?, NULL, ?, 0, NULL, 0, ?, ?, ?)",
                (key, raw, now, now, mode, filename, value))
    con.commit()
    con.close()


def set_setting(db: Path, key, value) -> None:
    con = sqlite3.connect(db)
    con.execute("INSERT OR REPLACE INTO Settings (key, value) VALUES (?, ?)", (key, value))
    con.commit()
    con.close()


def rows(db: Path) -> int:
    con = sqlite3.connect(db)
    ((n,),) = con.execute("SELECT COUNT(*) FROM Cache").fetchall()
    con.close()
    return n


def toy(n: int = 3) -> Toy:
    return Toy(name="t", values=[1], score=0.5, matrix=np.arange(float(n * n)).reshape(n, n))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    service_module._SERVICE = None  # a fresh process as far as lldd is concerned
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def jacobian_argv(model: Path, *extra: str) -> list[str]:
    return ["jacobian", "--model", str(model), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--top-k", "3", "--json", "-", "--quiet", *extra]


def computes_with_warning(capsys, model: Path, *extra: str) -> tuple[dict, str]:
    """A jacobian run that succeeds, prints its result and exactly one ``warning:`` line; (payload, warning)."""
    code, out, err = run_cli(capsys, *jacobian_argv(model, *extra))
    assert code == 0, err
    payload = json.loads(out)
    assert payload["cache_hit"] is False and len(payload["singular_values"]) == len(payload["tokens"])
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "not cached" in warnings[0]
    return payload, warnings[0]


# --- planted pickles: never unpickled ---------------------------------------------------------------
@pytest.mark.parametrize("where", ["inline", "value file"])
def test_a_planted_pickled_value_is_a_miss_and_never_runs(tmp_path, trap, marker, where):
    cache = ResultCache(tmp_path / "c")
    cache.set("jacobian:good", toy())
    db = tmp_path / "c" / "cache.db"
    if where == "inline":
        plant(db, "jacobian:planted", mode=MODE_PICKLE, value=trap)
    else:
        name = "ab/cd/" + "0" * 28 + ".val"
        (tmp_path / "c" / "ab" / "cd").mkdir(parents=True)
        (tmp_path / "c" / name).write_bytes(trap)
        plant(db, "jacobian:planted", mode=MODE_PICKLE, filename=name)
    assert cache.get("jacobian:planted") is None
    assert not marker.exists()
    assert "jacobian:planted" not in cache  # dropped
    assert sorted(cache.keys()) == ["jacobian:good"] and cache.info()["entries"] == 1
    assert cache.get("jacobian:good") is not None
    assert cache.clear() == 1
    assert not marker.exists()


def test_a_planted_pickled_key_is_skipped_by_every_listing(tmp_path, trap, marker):
    cache = ResultCache(tmp_path / "c")
    cache.set("jacobian:good", toy())
    cache.memo()["fact"] = "value"
    plant(tmp_path / "c" / "cache.db", sqlite3.Binary(trap), raw=0, value=b"x")
    assert sorted(cache.keys()) == ["jacobian:good", "memo:fact"]
    assert sorted(cache) == ["jacobian:good", "memo:fact"]
    assert cache.info()["by_kind"] == {"jacobian": 1, "memo": 1}
    assert dict(cache.memo()) == {"fact": "value"}
    assert cache.clear() == 3  # the planted row is removed with the rest
    assert not marker.exists()


def test_planted_rows_are_dropped_when_the_cache_opens(survivor, trap, marker, capsys):
    db = survivor.cache / "cache.db"
    plant(db, "jacobian:planted", mode=MODE_PICKLE, value=trap)
    plant(db, sqlite3.Binary(trap), raw=0, value=b"x")
    plant(db, 12345, mode=MODE_RAW, value=b"an integer key")
    before = rows(db)
    code, out, _err = run_cli(capsys, "cache", "info")
    assert code == 0 and "entries" in out
    assert rows(db) == before - 3
    assert not marker.exists()


def test_no_cache_path_calls_pickle(tmp_path, trap, marker, monkeypatch):
    """pickle.load/loads/Unpickler raise while every read and write path of the cache runs."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the cache called pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    directory = tmp_path / "c"
    cache = ResultCache(directory)
    small, large = toy(3), toy(200)  # large: above diskcache's 32 KB, stored as a value file
    cache.set("jacobian:small", small)
    cache.set("jacobian:large", large)
    memo = cache.memo()
    memo["short"] = "s"
    memo["long"] = "t" * 100_000  # a text value file
    plant(directory / "cache.db", "jacobian:planted", mode=MODE_PICKLE, value=trap)
    plant(directory / "cache.db", sqlite3.Binary(trap), raw=0, value=b"x")
    again = ResultCache(directory)  # opening scrubs the planted rows without decoding them
    for c in (cache, again):
        np.testing.assert_array_equal(c.get("jacobian:large").matrix, large.matrix)
        assert c.get("jacobian:small").score == 0.5
        assert c.get("jacobian:planted") is None and c.get("jacobian:missing") is None
        assert c.memo()["long"] == "t" * 100_000 and c.memo()["short"] == "s"
        assert sorted(c.memo()) == ["long", "short"] and "jacobian:small" in c
        assert c.info()["entries"] == 4
    assert again.clear() == 4
    assert not marker.exists()


def test_the_disk_refuses_anything_but_bytes_and_text(tmp_path):
    disk = BytesDisk(str(tmp_path))
    for key in (b"bytes", 1, 1.5, ("tuple",)):
        with pytest.raises(TypeError):
            disk.put(key)
    for value in ({"a": 1}, 1, 1.5, None, [b"x"]):
        with pytest.raises(TypeError):
            disk.store(value, False)


HOSTILE_SETTINGS = [
    ("disk_min_file_size", "abc"),
    ("disk_pickle_protocol", "not a protocol"),
    ("disk_unexpected_argument", 1),
    ("eviction_policy", "run-my-code"),
    ("size_limit", -1),
    ("cull_limit", "abc"),
    ("statistics", "yes"),
    ("sqlite_query_only", 1),  # would make every write fail
    ("sqlite_mmap_size", "0; DROP TABLE Cache"),
    ("sqlite_journal_mode = off; --", 1),
    ("_disk", "replaced"),
    ("directory", "/elsewhere"),
    ("__class__", "x"),
    ("count", "abc"),
    ("size", "abc"),
    ("hits", b"\x00"),
    (b"binary-key", 1),
]


@pytest.mark.parametrize("row", HOSTILE_SETTINGS, ids=lambda row: str(row[0]))
def test_a_hostile_settings_row_breaks_and_runs_nothing(cache_dir, capsys, row):
    first = ResultCache()
    first.set("jacobian:old", toy())
    first.close()
    set_setting(cache_dir / "cache.db", *row)
    code, _out, err = run_cli(capsys, "cache", "info")
    assert code == 0, err
    cache = ResultCache()
    assert cache.get("jacobian:old") is not None  # nothing was evicted
    cache.set("jacobian:new", toy())  # writes still work
    assert cache.get("jacobian:new") is not None
    assert cache.info()["size_limit_bytes"] == size_limit_bytes() and cache.info()["entries"] == 2


def test_hostile_settings_leave_a_computed_result_a_hit(survivor):
    for row in HOSTILE_SETTINGS:
        set_setting(survivor.cache / "cache.db", *row)


@pytest.mark.parametrize("how", ["absolute", "relative", "symbolic link"])
def test_value_files_outside_the_cache_are_never_read_or_deleted(tmp_path, how):
    directory = tmp_path / "c"
    cache = ResultCache(directory)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if how == "absolute":
        name = str(victim)
    elif how == "relative":
        name = "../victim.txt"
    else:
        name = "ab/cd/" + "1" * 28 + ".val"
        (directory / "ab" / "cd").mkdir(parents=True)
        (directory / name).symlink_to(victim)
    plant(directory / "cache.db", "jacobian:planted", mode=MODE_BINARY, filename=name)
    assert cache.get("jacobian:planted") is None
    assert "jacobian:planted" not in cache
    cache.clear()
    assert victim.read_text() == "precious"


def test_an_undecodable_text_value_is_a_missing_memo(tmp_path):
    directory = tmp_path / "c"
    cache = ResultCache(directory)
    name = "ef/01/" + "2" * 28 + ".val"
    (directory / "ef" / "01").mkdir(parents=True)
    (directory / name).write_bytes(b"\xff\xfe not utf-8")
    plant(directory / "cache.db", "memo:fact", mode=MODE_TEXT, filename=name)
    with pytest.raises(KeyError):
        cache.memo()["fact"]


# --- results are validated -------------------------------------------------------------------------
def jacobian_result(columns: int = 4, tokens: int = 3) -> JacobianResult:
    d = 4
    return JacobianResult(
        model="m", revision="r", dtype="float64", family="gpt2", tokens=["a"] * tokens, input_ids=[1] * tokens,
        layer=1, n_layers=2, final_norm=True, reconstruction_error=0.0, plain_reconstruction_error=0.1,
        detached_vs_normal=0.0, output_norm=1.0, bias_norm=0.1, plain_bias_norm=0.2, elapsed_s=0.1,
        y=np.ones(d), reconstruction=np.ones(d), plain_reconstruction=np.ones(d), bias=np.zeros(d),
        token_contributions=np.ones(tokens), singular_values=np.ones((tokens, columns)), stable_rank=np.ones(tokens),
    )


def test_a_corrupt_result_is_neither_stored_nor_served(tmp_path):
    cache = ResultCache(tmp_path / "c")
    good = jacobian_result()
    cache.set("jacobian:good", good)
    assert cache.get("jacobian:good") is not None
    wrong = jacobian_result()
    wrong.singular_values = np.ones((2, 4))  # a row short: one token lost
    with pytest.raises(NumericalError, match="consistency"):
        cache.set("jacobian:wrong", wrong)
    assert "jacobian:wrong" not in cache
    broken = jacobian_result()
    broken.singular_values[0, 0] = np.inf
    with pytest.raises(NumericalError):
        cache.set("jacobian:inf", broken)
    # a well-formed but inconsistent entry planted in the cache is a miss, and dropped
    plant(tmp_path / "c" / "cache.db", "jacobian:planted", value=to_bytes(wrong))
    assert cache.get("jacobian:planted") is None and "jacobian:planted" not in cache


def test_nan_where_it_means_undefined_is_stored(tmp_path):
    cache = ResultCache(tmp_path / "c")
    cache.set("toy:nan", Toy(name="t", values=[], score=float("nan"), matrix=np.full(3, np.nan)))
    assert np.isnan(cache.get("toy:nan").matrix).all()


# --- LLDD_CACHE_SIZE_GB ----------------------------------------------------------------------------
BAD_SIZES = ["abc", "nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "-0", "0x10", "4 GB", "1e7", "--1", "4,5"]


@pytest.mark.parametrize("value", BAD_SIZES)
def test_a_bad_cache_size_is_refused(cache_dir, capsys, monkeypatch, value):
    monkeypatch.setenv("LLDD_CACHE_SIZE_GB", value)
    with pytest.raises(CacheSettingError, match="LLDD_CACHE_SIZE_GB"):
        size_limit_bytes()
    assert "LLDD_CACHE_SIZE_GB" in refuse(capsys, "cache", "info")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc"])
def test_a_bad_cache_size_refuses_analyses_and_keeps_the_results(survivor, capsys, monkeypatch, value):
    monkeypatch.setenv("LLDD_CACHE_SIZE_GB", value)
    assert "LLDD_CACHE_SIZE_GB" in refuse(capsys, *survivor.argv)
    monkeypatch.delenv("LLDD_CACHE_SIZE_GB")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_size_is_the_default(monkeypatch, value):
    monkeypatch.setenv("LLDD_CACHE_SIZE_GB", value)
    assert size_limit_bytes() == 4 << 30


def test_a_size_below_the_stored_results_is_refused(survivor, capsys, monkeypatch):
    monkeypatch.setenv("LLDD_CACHE_SIZE_GB", "1e-6")  # about 1 KB: every stored result would go
    line = refuse(capsys, *jacobian_argv(survivor.model, "--layer", "1"))
    assert "holds" in line and "cache clear" in line
    code, out, _err = run_cli(capsys, "cache", "info")  # still readable: it shows how big the cache is
    assert code == 0 and "entries" in out
    refuse(capsys, *jacobian_argv(survivor.model, "--layer", "1"))  # 'cache info' did not adopt the low limit
    monkeypatch.delenv("LLDD_CACHE_SIZE_GB")


def test_after_clearing_a_tiny_limit_computes_and_says_it_cannot_keep_the_result(tiny_dirs, cache_dir, capsys,
                                                                                 monkeypatch):
    ResultCache().set("toy:1", toy())
    monkeypatch.setenv("LLDD_CACHE_SIZE_GB", "1e-6")
    code, out, _err = run_cli(capsys, "cache", "clear")
    assert code == 0 and out.startswith("cleared 1 entries")
    _, warning = computes_with_warning(capsys, tiny_dirs["gpt2"])
    assert "LLDD_CACHE_SIZE_GB" in warning


def test_lowering_the_size_limit_evicts_nothing(tmp_path):
    directory = tmp_path / "c"
    cache = ResultCache(directory)
    for i in range(5):
        cache.set(f"toy:{i}", toy(20))
    cache.close()
    with pytest.raises(CacheSettingError, match="cache clear"):
        ResultCache(directory, size_limit=1024)
    again = ResultCache(directory)
    assert again.info()["entries"] == 5 and all(again.get(f"toy:{i}") is not None for i in range(5))


def test_a_cache_filled_up_to_its_unchanged_limit_opens(tmp_path):
    directory, limit = tmp_path / "c", 200_000
    cache = ResultCache(directory, size_limit=limit)
    for i in range(60):  # ~3 KB each: the oldest are evicted, as designed
        cache.set(f"toy:{i}", toy(20))
    cache.close()
    again = ResultCache(directory, size_limit=limit)
    assert 0 < again.info()["entries"] < 60 and again.get("toy:59") is not None


def test_a_result_larger_than_the_limit_says_so(tmp_path):
    cache = ResultCache(tmp_path / "c", size_limit=200_000)
    with pytest.raises(CacheError, match="LLDD_CACHE_SIZE_GB"):
        cache.set("toy:big", toy(200))  # 320 KB


# --- damaged cache.db --------------------------------------------------------------------------------
def damage(db: Path, how: str) -> None:
    for side in (db.with_name("cache.db-wal"), db.with_name("cache.db-shm")):
        side.unlink(missing_ok=True)
    data = db.read_bytes() if db.exists() else b""
    if how == "garbage":
        db.write_bytes(os.urandom(8192))
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif how == "header zeroed":
        db.write_bytes(b"\0" * 100 + data[100:])
    elif how == "text file":
        db.write_text("not a database\n")
    elif how == "a folder":
        db.unlink()
        db.mkdir()
    elif how == "another database":
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE Cache (x)")
        con.execute("CREATE TABLE Settings (only_one_column)")
        con.commit()
        con.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "header zeroed", "text file", "a folder", "another database"])
def test_a_damaged_cache_computes_warns_and_has_a_way_out(tiny_dirs, cache_dir, capsys, how):
    model = tiny_dirs["gpt2"]
    old = ResultCache()
    old.set("jacobian:old", toy(60))  # some content, then damage it
    old.close()
    damage(cache_dir / "cache.db", how)
    payload, warning = computes_with_warning(capsys, model)
    assert "cache clear --force" in warning
    for argv in (("cache", "info"), ("cache", "clear")):
        assert "cache clear --force" in refuse(capsys, *argv)
    code, out, _ = run_cli(capsys, "cache", "clear", "--force")
    assert code == 0 and "moved the damaged database aside" in out
    assert list(cache_dir.glob("cache.db.damaged-*"))
    code, out, _ = run_cli(capsys, "cache", "info")
    assert code == 0 and "entries    0" in out
    code, out, err = run_cli(capsys, *jacobian_argv(model))  # the cache works again: computed and stored
    assert code == 0 and "warning" not in err and json.loads(out)["cache_hit"] is False
    code, out, _ = run_cli(capsys, *jacobian_argv(model))
    again = json.loads(out)
    assert again["cache_hit"] is True and again["singular_values"] == payload["singular_values"]


def test_an_empty_cache_db_is_a_new_cache(cache_dir):
    cache_dir.mkdir()
    (cache_dir / "cache.db").write_bytes(b"")
    cache = ResultCache()
    cache.set("toy:1", toy())
    assert cache.get("toy:1") is not None


def test_clear_force_on_a_healthy_cache_just_clears(tmp_path, cache_dir, capsys):
    ResultCache().set("toy:1", toy())
    code, out, _ = run_cli(capsys, "cache", "clear", "--force")
    assert code == 0 and out.startswith("cleared 1 entries") and not list(cache_dir.glob("*.damaged-*"))


# --- unusable locations ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["a file", "under a file", "/proc", "/dev/null"])
def test_an_unusable_cache_location_computes_and_warns(tiny_dirs, tmp_path, capsys, monkeypatch, where):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    path = {"a file": a_file, "under a file": a_file / "cache", "/proc": Path("/proc/lldd-no-such/cache"),
            "/dev/null": Path("/dev/null")}[where]
    monkeypatch.setenv("LLDD_CACHE_DIR", str(path))
    _, warning = computes_with_warning(capsys, tiny_dirs["gpt2"])
    assert "LLDD_CACHE_DIR" in warning
    assert "LLDD_CACHE_DIR" in refuse(capsys, "cache", "info")
    assert "LLDD_CACHE_DIR" in refuse(capsys, "cache", "clear", "--force")
    assert a_file.read_text() == "x"


def test_a_read_only_cache_folder_computes_and_warns(tiny_dirs, cache_dir, capsys, monkeypatch):
    # Tests run as root, for whom chmod changes nothing: sqlite's own refusal is simulated.
    def read_only(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(disk_module.diskcache, "Cache", read_only)
    _, warning = computes_with_warning(capsys, tiny_dirs["gpt2"])
    assert "writable folder" in warning
    assert "writable folder" in refuse(capsys, "cache", "info")


@pytest.mark.parametrize(("failure", "says"), [
    (OSError(errno.ENOSPC, "No space left on device"), "is full"),
    (sqlite3.OperationalError("database or disk is full"), "is full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "writable folder"),
    (sqlite3.DatabaseError("database disk image is malformed"), "cache clear --force"),
    (OSError(errno.EIO, "Input/output error"), "writable folder"),
], ids=["ENOSPC", "sqlite full", "read-only", "malformed", "EIO"])
def test_a_failed_write_still_shows_the_result(survivor, capsys, monkeypatch, failure, says):
    def fail(self, value, read, key=None):
        raise failure

    monkeypatch.setattr(BytesDisk, "store", fail)
    _, warning = computes_with_warning(capsys, survivor.model, "--layer", "1")
    assert says in warning
    code, out, _err = run_cli(capsys, *jacobian_argv(survivor.model, "--layer", "1"))  # not stored: computed again
    assert code == 0 and json.loads(out)["cache_hit"] is False


def test_the_service_reopens_a_cache_that_was_fixed(tiny_dirs, tmp_path, monkeypatch, fresh_service):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv("LLDD_CACHE_DIR", str(a_file))
    service = service_module.get_service()
    assert isinstance(service.cache, UnavailableCache)
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    first = service.jacobian(spec, PROMPT)
    assert first.warning and "LLDD_CACHE_DIR" in first.warning
    monkeypatch.setenv("LLDD_CACHE_DIR", str(tmp_path / "fixed"))
    second = service.jacobian(spec, PROMPT)
    assert second.warning is None and not second.cache_hit
    assert service.jacobian(spec, PROMPT).cache_hit


def test_the_page_shows_the_result_and_a_warning(tiny_dirs, fresh_service, monkeypatch):
    def full(self, value, read, key=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    at = open_page(None, tiny_dirs["gpt2"], monkeypatch)
    monkeypatch.setattr(BytesDisk, "store", full)
    at.button(key="dj_compute").click().run()
    assert not at.exception and not at.error
    assert any(m.label == "From cache" and m.value == "no" for m in at.metric)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "not cached" in warnings[0] and "full" in warnings[0]


def test_a_damaged_cache_is_named_in_the_sidebar(tiny_dirs, cache_dir, fresh_service, monkeypatch):
    cache_dir.mkdir()
    (cache_dir / "cache.db").write_bytes(os.urandom(4096))
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", str(tiny_dirs["gpt2"]))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not at.error
    assert any("cache clear --force" in w.value for w in at.sidebar.warning)
    assert isinstance(service_module.get_service().cache, UnavailableCache)
    assert isinstance(service_module.get_service().cache.error, CacheDamagedError)
