"""Result dataclasses: their base classes and their safe serialization.

Results hold numpy arrays and JSON-able metadata only, never models or tensors. They are stored as
``b"LLDD1" + len(header) + header JSON + npz`` with ``allow_pickle=False``: reading a cache entry
can never execute code, and anything malformed raises :class:`ValueError` (a cache miss). Fields
are restored by name, so a class may reorder its fields (or move them into a base) without making
stored entries unreadable; renaming or removing a field does.

Bases: :class:`Result` (the generic :meth:`~Result.summary`), :class:`ModelStamp` (which model
computed it), :class:`PromptStamp` (and on which prompt), :class:`ConceptStamp` (and with which
concept dataset). Every concrete result is a :func:`result_type` subclass of one of them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any, ClassVar, TypeVar

import numpy as np

_MAGIC = b"LLDD1"
_REGISTRY: dict[str, type] = {}

T = TypeVar("T")


@dataclasses.dataclass
class Result:
    """Base of every stored result, with the summary the CLI writes as JSON (``--json``).

    :meth:`summary` is every field that does not hold an array, in field order, except those named
    in :attr:`SUMMARY_SKIP`; then the arrays named in :attr:`SUMMARY_ARRAYS` as nested lists; then
    what :meth:`summary_extra` derives (per token, per prompt, per schedule).
    """

    #: Array fields the summary lists whole (other arrays stay out: they can be large).
    SUMMARY_ARRAYS: ClassVar[tuple[str, ...]] = ()
    #: Non-array fields the summary leaves out (bulky lists, or ones summary_extra shows otherwise).
    SUMMARY_SKIP: ClassVar[tuple[str, ...]] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-able facts of the result: plain fields, the named arrays as lists, derived entries."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in self.SUMMARY_SKIP and not isinstance(getattr(self, f.name), np.ndarray)}
        out.update({name: getattr(self, name).tolist() for name in self.SUMMARY_ARRAYS})
        out.update(self.summary_extra())
        return out

    def summary_extra(self) -> dict[str, Any]:
        """Entries the summary derives from the arrays; none by default."""
        return {}


@dataclasses.dataclass
class ModelStamp(Result):
    """Which model computed the result (filled by :meth:`lldd_core.models.loading.ModelHandle.result_fields`)."""

    model: str  # hub id or local path, as given
    revision: str  # the resolved hub commit, or "sha256:…" of local weight files
    dtype: str  # the precision it ran in: the dtype, "+quantization" when quantized
    family: str  # the architecture adapter's name


@dataclasses.dataclass
class PromptStamp(ModelStamp):
    """A result of one prompt: its tokens as strings and as ids (``result_fields(input_ids)``)."""

    #: The ids are part of the cache key; the summary shows the tokens.
    SUMMARY_SKIP: ClassVar[tuple[str, ...]] = ("input_ids",)

    tokens: list  # [T] token strings
    input_ids: list  # [T] token ids


@dataclasses.dataclass
class ConceptStamp(ModelStamp):
    """A result of one concept dataset on one model: the data, its splits and the injection layers."""

    n_params: int  # parameters of the model
    dataset: str  # the dataset's name
    source: str  # where its rows came from (ConceptData.source)
    classes: list  # [label 1 name, label 0 name]
    n_layers: int  # L, blocks of the model
    layers: list  # [K] injection layers k
    split_sizes: dict  # per class: concept / operating / evaluation


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
