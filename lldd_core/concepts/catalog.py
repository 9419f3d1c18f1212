"""Loading a registered dataset by name, and the listing of every one (``python -m lldd_core datasets``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .data import DEFAULT_MAX_PER_CLASS, ConceptData, Source
from .hub import cached_split_rows, hub_cache_dir, load_hub
from .registry import REGISTRY, get_entry


def load(name: str, *, hub_split: str | None = None, max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
         seed: int = 0) -> ConceptData:
    """Load registered dataset ``name`` (built-in or hub); hub options as in :func:`load_hub`."""
    entry = get_entry(name)
    if entry.source == "builtin":
        return load_builtin(name)
    return load_hub(name, hub_split=hub_split, max_per_class=max_per_class, seed=seed)


def load_builtin(name: str) -> ConceptData:
    """A built-in dataset from the package's JSONL files (never touches the network)."""
    from ..demo import datasets as builtin

    entry = get_entry(name)
    if entry.source != "builtin":
        raise InputError(f"{name!r} is not a built-in dataset; use load({name!r})")
    rows = builtin.load(name)
    return ConceptData(
        name=name,
        source=f"builtin:{name}",
        texts=tuple(r["text"] for r in rows),
        labels=np.array([int(r["label"]) for r in rows], dtype=np.int64),
        classes=entry.classes,
    )


@dataclass(frozen=True)
class DatasetListing:
    """One row of ``python -m lldd_core datasets``.

    ``size``: rows of the (default) split: counted for built-ins, read from the local cache for a
    cached hub dataset, else as published (``None`` if unknown). ``available_offline``: built-ins
    always; hub datasets when their split is in the local datasets cache.
    """

    name: str
    source: Source
    origin: str
    classes: tuple[str, str]
    size: int | None
    available_offline: bool
    description: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``--json``)."""
        return {"name": self.name, "source": self.source, "origin": self.origin,
                "classes": {"1": self.classes[0], "0": self.classes[1]}, "size": self.size,
                "available_offline": self.available_offline, "description": self.description}


def list_datasets() -> list[DatasetListing]:
    """Every registered dataset with its classes, size and offline availability (no network)."""
    from ..demo import datasets as builtin

    out: list[DatasetListing] = []
    cache = hub_cache_dir()
    for entry in REGISTRY.values():
        if entry.hub is None:
            try:
                with builtin.path_of(entry.name).open(encoding="utf-8") as fh:
                    size: int | None = sum(1 for line in fh if line.strip())
            except OSError:
                size = None
            available = True
        else:
            cached = cached_split_rows(entry.hub, cache_dir=cache)
            available = cached is not None
            size = cached if cached is not None else entry.hub.rows
        out.append(DatasetListing(entry.name, entry.source, entry.origin, entry.classes, size, available,
                                  entry.description))
    return out


def format_listing(rows: Sequence[DatasetListing] | None = None) -> str:
    """A plain-text table of :func:`list_datasets` (one line per dataset, a header first)."""
    rows = list_datasets() if rows is None else rows
    table = [("name", "source", "classes (1 / 0)", "size", "offline", "origin")]
    for r in rows:
        table.append((r.name, r.source, f"{r.classes[0]} / {r.classes[1]}",
                      "?" if r.size is None else f"{r.size:,}", "yes" if r.available_offline else "no", r.origin))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
