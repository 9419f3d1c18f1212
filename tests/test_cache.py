"""The result cache: keys cover every input, and a corrupted entry is a miss, never a crash."""

from __future__ import annotations

import numpy as np

from lldd_core.store.cache import ResultCache
from lldd_core.store.keys import make_key
from tests.test_results import Toy

BASE = {"model": "m", "revision": "r1", "dtype": "float32", "input_ids": [1, 2, 3], "params": {"layer": 2}}


def test_key_depends_on_every_input():
    key = make_key("jacobian", **BASE)
    assert key == make_key("jacobian", **{**BASE, "params": {"layer": 2}})
    for change in ({"revision": "r2"}, {"dtype": "float64"}, {"input_ids": [1, 2]}, {"params": {"layer": 1}},
                   {"model": "other"}, {"code_version": "0.0.0"}):
        assert make_key("jacobian", **{**BASE, **change}) != key
    assert make_key("spectrum", **BASE) != key


def test_hit_returns_equal_arrays(tmp_path):
    cache = ResultCache(tmp_path)
    toy = Toy(name="a", values=[1], score=1.5, matrix=np.eye(3))
    cache.set("k", toy)
    again = ResultCache(tmp_path).get("k")  # a fresh process sees it too
    assert again is not None and again.score == 1.5
    np.testing.assert_array_equal(again.matrix, toy.matrix)
    assert cache.get("missing") is None


def test_corrupted_entry_is_a_miss_and_dropped(tmp_path):
    cache = ResultCache(tmp_path)
    cache.set("k", Toy(name="a", values=[], score=0.0, matrix=np.zeros(2)))
    cache._dc.set("k", b"LLDD1 truncated")
    assert cache.get("k") is None
    assert "k" not in cache
    cache._dc.set("k2", "not bytes")  # a text row: lldd stores results as bytes only
    assert cache.get("k2") is None


def test_info_and_clear(tmp_path):
    cache = ResultCache(tmp_path)
    cache.set("jacobian:1", Toy(name="a", values=[], score=0.0, matrix=np.zeros(2)))
    cache.memo()["x"] = "y"
    info = cache.info()
    assert info["entries"] == 2 and info["by_kind"] == {"jacobian": 1, "memo": 1}
    assert cache.memo()["x"] == "y"
    assert cache.clear() == 2
    assert cache.info()["entries"] == 0
