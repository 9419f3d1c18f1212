"""Counting block evaluations: the deterministic cost measure of the depth analyses' benches and tests.

A *layer evaluation* is one call of one transformer block that runs its arithmetic, whatever its
batch, its number of tokens or its vmapped tangent columns (a vmapped JVP of ``r`` columns is one
call: the block runs once on batched tensors), and so is each product through a kept linearization of one
block (:func:`~lldd_core.forward.jvp.kept_operator`: a backward through the block's kept graph, which
a forward hook cannot see; :func:`note_products` reports them). ``evaluations / n_layers`` is a count of
forward-pass equivalents: a full forward of the prompt evaluates every block once. At the
benches' sizes (prompt length ``T`` about the order ``r``) one call costs about one block of a full
forward either way — a JVP of ``r`` columns pushes ``r + 1`` rows, a forward ``T`` tokens — and a
call of one or a few rows is bound by its per-call overhead, so the count tracks wall time without
depending on the machine. It does not see what a call costs inside: the bench prints wall times
next to it. Calls of a :mod:`lldd_core.forward.blockwise` argument-recording stub are not
evaluations (no block arithmetic runs) and are counted apart.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from ..models.arch import FamilyAdapter
from ..models.placement import forward_attribute
from . import hooks as hk

#: marks a forward that only records its arguments (:mod:`lldd_core.forward.blockwise`'s stubs)
STUB_MARK = "_lldd_capture_stub"
_ACTIVE: dict[int, list[BlockCount]] = {}  # id(model) -> the counters open on it


def is_stub(module: nn.Module) -> bool:
    """Whether ``module``'s forward is, for now, an argument-recording stub (no block arithmetic)."""
    return bool(getattr(module.__dict__.get(forward_attribute(module)), STUB_MARK, False))


def note_products(model: nn.Module, layer: int, n: int = 1) -> None:
    """Record ``n`` kept-graph products of block ``layer`` with every counter open on ``model`` (none: nothing)."""
    for count in _ACTIVE.get(id(model), []):
        count.products[layer] += n


@dataclass
class BlockCount:
    """Block calls seen so far, per block index."""

    n_layers: int
    calls: Counter = field(default_factory=Counter)  # block index -> forward calls that ran the block
    products: Counter = field(default_factory=Counter)  # block index -> kept-graph products (note_products)
    stubbed: int = 0  # calls that ran a recording stub instead of the block

    @property
    def evaluations(self) -> int:
        return sum(self.calls.values()) + sum(self.products.values())

    @property
    def forward_equivalents(self) -> float:
        """``evaluations / n_layers`` (module doc)."""
        return self.evaluations / self.n_layers


@contextlib.contextmanager
def counted_blocks(model: nn.Module, adapter: FamilyAdapter) -> Iterator[BlockCount]:
    """Count every block call of ``model`` inside the ``with`` body (pre-hooks, removed on exit)."""
    blocks = adapter.layers(model)
    count = BlockCount(len(blocks))

    def counter(j: int) -> hk.Hook:
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if is_stub(module):
                count.stubbed += 1
            else:
                count.calls[j] += 1

        return hk.Hook(blocks[j], "pre", pre, with_kwargs=True)

    _ACTIVE.setdefault(id(model), []).append(count)
    try:
        with hk.hooks(*(counter(j) for j in range(len(blocks)))):
            yield count
    finally:
        _ACTIVE[id(model)].remove(count)
        if not _ACTIVE[id(model)]:
            del _ACTIVE[id(model)]
