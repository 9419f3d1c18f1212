"""Results serialize to JSON + npz only, and anything malformed is refused."""

from __future__ import annotations

import numpy as np
import pytest

from lldd_core.store.results import from_bytes, result_type, to_bytes, to_jsonable


@result_type
class Toy:
    name: str
    values: list
    score: float
    matrix: np.ndarray


def test_round_trip():
    toy = Toy(name="x", values=[1, 2], score=float("nan"), matrix=np.arange(6.0).reshape(2, 3))
    back = from_bytes(to_bytes(toy))
    assert back.name == "x" and back.values == [1, 2] and np.isnan(back.score)
    np.testing.assert_array_equal(back.matrix, toy.matrix)
    assert to_jsonable(toy)["matrix"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize("blob", [b"", b"garbage", b"LLDD1\x05\x00\x00\x00{bad}", b"LLDD1\xff\xff\xff\xff"])
def test_malformed_is_value_error(blob):
    with pytest.raises(ValueError):
        from_bytes(blob)


def test_object_arrays_are_refused():
    with pytest.raises(TypeError):
        to_bytes(Toy(name="x", values=[], score=0.0, matrix=np.array([object()], dtype=object)))
