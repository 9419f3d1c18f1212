"""Result dataclasses and their safe serialization.

Results hold numpy arrays and JSON-able metadata only, never models or tensors. They are stored as
``b"LLDD1" + len(header) + header JSON + npz`` with ``allow_pickle=False``: reading a cache entry
can never execute code, and anything malformed raises :class:`ValueError` (a cache miss).
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any, TypeVar

import numpy as np

_MAGIC = b"LLDD1"
_REGISTRY: dict[str, type] = {}

T = TypeVar("T")


def result_type(cls: type[T]) -> type[T]:
    """Class decorator: make ``cls`` a dataclass that the cache can store and restore."""
    cls = dataclasses.dataclass(cls)
    _REGISTRY[cls.__name__] = cls
    return cls


def to_bytes(result: Any) -> bytes:
    """Serialize a registered result dataclass: arrays to npz, everything else to JSON."""
    name = type(result).__name__
    if _REGISTRY.get(name) is not type(result):
        raise TypeError(f"{name} is not a registered result type")
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{name}.{f.name} is an object array")
            arrays[f.name] = value
        else:
            meta[f.name] = value
    header = json.dumps({"type": name, "meta": meta}, allow_nan=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return _MAGIC + struct.pack("<I", len(header)) + header + buf.getvalue()


def from_bytes(blob: bytes) -> Any:
    """Inverse of :func:`to_bytes`; raises ``ValueError`` for anything malformed."""
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("bad magic")
        (n,) = struct.unpack("<I", blob[len(_MAGIC) : len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        header = json.loads(blob[start : start + n])
        cls = _REGISTRY[header["type"]]
        with np.load(io.BytesIO(blob[start + n :]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(**header["meta"], **arrays)
    except Exception as err:  # any corruption is a miss, whatever the library raised
        raise ValueError(f"unreadable result: {err}") from err


def to_jsonable(result: Any) -> dict[str, Any]:
    """A plain dict (arrays as nested lists) for ``--json`` output."""
    return {
        f.name: getattr(result, f.name).tolist() if isinstance(getattr(result, f.name), np.ndarray) else getattr(result, f.name)
        for f in dataclasses.fields(result)
    }
