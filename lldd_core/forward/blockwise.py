"""One prompt's last token, block by block: each frozen-context map ``f_l`` called on its own.

:class:`~lldd_core.forward.depth.PromptContext` evaluates ``f_l`` by running the last token through
the whole model (blocks ``0..l``, hooks replacing block ``l``'s input) on a deep copy of the
prefix's KV cache. Here each block is called directly, from a state the caller already knows:

* :func:`prompt_blocks` runs the prefix once (its KV cache kept) and then the last token through
  the model **once with every block's forward stubbed out** (no block arithmetic): the stubs record
  the arguments the model hands each block (attention mask, positions, rotary tables, the cache)
  and ``x_0``, block 0's input. Nothing of the prefix is copied.
* ``f_l(x)`` is then ``block_l(x, **its recorded arguments)`` with the cache replaced by a
  :class:`_PrefixView`: block ``l``'s attention gets its own layer's prefix keys and values plus the
  new token's, through the layer's own ``update`` on a shallow copy of that layer, so the prefix is
  never changed and no other layer is touched.

* :func:`batch_blocks` does the same for many prompts at once, left-padded to one length (the
  attention mask hides the padding, positions count real tokens): :class:`BatchBlocks` calls take
  one row per prompt, and a vmapped JVP there gives ``A_l(p) P`` of every prompt and every column of
  ``P`` in one call of one block (the full-sequence alternative,
  :func:`~lldd_core.forward.depth.last_token_actions`, re-runs blocks ``0..l`` and carries the
  tangents through every position).

``x_{l+1} = f_l(x_l)`` of this chain is the last token's state of the ordinary forward (the same
block arithmetic on the same arguments; equal up to batching round-off), and
``A_l = ∂f_l/∂x_l`` at a known ``x_l`` is one vmapped JVP of one block
(:func:`~lldd_core.forward.jvp.columns`, with its fallbacks). Callers run everything inside
:meth:`PromptBlocks.live`, which enters :func:`~lldd_core.forward.linearize.live_mode` once.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from ..models.arch import FamilyAdapter
from ..models.placement import input_device, replaced_forwards
from . import hooks as hk
from .counting import STUB_MARK, note_products
from .depth import pad_batch
from .jvp import columns, kept_operator, model_mode
from .linearize import live_mode

#: cache layers whose ``update`` rebinds its tensors (``torch.cat``) instead of writing into them
_COPY_ON_WRITE = (DynamicLayer, DynamicSlidingWindowLayer)


class _PrefixView:
    """The cache a directly called block sees: ``update(k, v, l)`` returns layer ``l``'s prefix with
    ``k, v`` appended, exactly as that cache layer's own ``update`` does (sliding windows included),
    but on a shallow copy of the layer, so the stored prefix stays as it is. Copy-on-write is safe
    because dynamic cache layers rebind (``torch.cat``), never write into, their tensors. A batch of
    ``m`` rows gets the prefix expanded to ``m`` (a view) before the append."""

    def __init__(self, cache: Cache) -> None:
        self._layers = cache.layers

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        layer = copy.copy(self._layers[layer_idx])
        m = key_states.shape[0]
        if layer.keys.shape[0] != m:  # a batch of rows: every row sees the same prefix
            layer.keys = layer.keys.expand(m, *layer.keys.shape[1:])
            layer.values = layer.values.expand(m, *layer.values.shape[1:])
        return layer.update(key_states, value_states, *args, **kwargs)


@dataclass
class _Blocks:
    """What both kinds share: the model, each block's recorded arguments, the live-mode guard."""

    model: nn.Module
    adapter: FamilyAdapter
    arguments: list[tuple[tuple, dict]]  # per block: (positional args after the hidden state, keyword args)

    def __post_init__(self) -> None:
        self._live = False

    @property
    def n_layers(self) -> int:
        return len(self.arguments)

    @contextlib.contextmanager
    def live(self) -> Iterator[_Blocks]:
        """:func:`~lldd_core.forward.linearize.live_mode` (and ``no_grad``; forward AD ignores it) for the ``with`` body."""
        with live_mode(self.model, self.adapter), torch.no_grad():
            self._live = True
            try:
                yield self
            finally:
                self._live = False

    def _call(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if not self._live:
            raise RuntimeError("blockwise calls run inside `with blocks.live():`")
        args, kwargs = self.arguments[layer]
        return hk.first(self.adapter.layers(self.model)[layer](h, *args, **kwargs))

    # how a kind of blocks feeds a function of its inputs to the JVP helpers (``X`` the input rows)
    def _f(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _tangents(self, X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _arrange(self, cols: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def actions(self, layer: int, X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        """``A_l P`` at block ``layer``'s input ``X`` for directions ``P`` ``[d, c]``: one vmapped JVP of
        block ``layer`` alone (or :mod:`lldd_core.forward.jvp`'s fallbacks)."""
        return self._arrange(columns(self.model, self._f(layer), X, self._tangents(X, P)))

    def operator(self, layer: int, X: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``P -> A_l P`` at ``X`` for directions ``P`` ``[d, c]`` asked one after another (Arnoldi's
        products): one call of block ``layer`` with its graph kept, then a backward per product
        (:func:`~lldd_core.forward.jvp.kept_operator`); where that graph fails its check, or the model
        runs on finite differences, each product is :meth:`actions`."""
        fallback = lambda P: self.actions(layer, X, P)  # noqa: E731
        if model_mode(self.model) == "fd":
            return fallback
        try:
            kept = kept_operator(self._f(layer), X)
        except (RuntimeError, NotImplementedError):
            return fallback
        usable = True

        def apply(P: torch.Tensor) -> torch.Tensor:
            nonlocal usable
            if usable:
                try:
                    out = self._arrange(kept(self._tangents(X, P)))
                    note_products(self.model, layer)
                    return out
                except (RuntimeError, NotImplementedError):
                    usable = False  # the adjoint check failed on the first product: forward mode from now on
            return fallback(P)

        return apply


class PromptBlocks(_Blocks):
    """One prompt's blocks, each callable alone at the last token (module doc). Inputs ``x`` are ``[d]``
    (:meth:`actions` and :meth:`operator` give ``[d, c]``); :meth:`map` takes a batch of rows ``[m, d]``,
    every row on the same prefix."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor, x0: torch.Tensor,
                 arguments: list[tuple[tuple, dict]]) -> None:
        super().__init__(model, adapter, arguments)
        self.input_ids = input_ids  # [T]
        self.x0 = x0  # [d]: the last token's x_0

    def map(self, layer: int, X: torch.Tensor) -> torch.Tensor:
        """``f_l(x)`` for each row of ``X`` ``[m, d]`` -> ``[m, d]``: one call of block ``layer``."""
        return self._call(layer, X.unsqueeze(1))[:, 0]

    def _f(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda v: self._call(layer, v.reshape(1, 1, -1))[0, 0]

    def _tangents(self, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        return P.T.to(x.dtype)  # [c, d]

    def _arrange(self, cols: torch.Tensor) -> torch.Tensor:
        return cols.T

    def states(self) -> torch.Tensor:
        """``x_0 .. x_L`` ``[L + 1, d]`` of the last token: ``L`` block calls."""
        xs = [self.x0]
        for layer in range(self.n_layers):
            xs.append(self.map(layer, xs[-1][None])[0])
        return torch.stack(xs)


class BatchBlocks(_Blocks):
    """Many prompts' blocks, each callable alone at their last tokens: row ``i`` of every input is prompt
    ``i`` (left-padded prefixes in one cache; :func:`batch_blocks`). Inputs ``X`` are ``[N, d]``;
    :meth:`actions` and :meth:`operator` give every prompt's ``A_l(p) P`` ``[N, d, c]``, all prompts and
    all columns in one call of one block."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, x0: torch.Tensor,
                 arguments: list[tuple[tuple, dict]]) -> None:
        super().__init__(model, adapter, arguments)
        self.x0 = x0  # [N, d]

    def map(self, layer: int, X: torch.Tensor) -> torch.Tensor:
        """``f_l(p)(x_p)`` for each prompt's row of ``X`` ``[N, d]`` -> ``[N, d]``: one call of block ``layer``."""
        return self._call(layer, X.unsqueeze(1))[:, 0]

    def _f(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda V: self._call(layer, V.unsqueeze(1))[:, 0]

    def _tangents(self, X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        return P.T.to(X.dtype)[:, None, :].expand(P.shape[1], *X.shape)  # [c, N, d]

    def _arrange(self, cols: torch.Tensor) -> torch.Tensor:
        return cols.permute(1, 2, 0)

    def states(self) -> torch.Tensor:
        """``x_0 .. x_L`` ``[N, L + 1, d]`` of every prompt's last token: ``L`` block calls."""
        xs = [self.x0]
        for layer in range(self.n_layers):
            xs.append(self.map(layer, xs[-1]))
        return torch.stack(xs, dim=1)


def _cache_bytes(blocks: _Blocks) -> int:
    args, kwargs = blocks.arguments[0]
    view = next((v for v in [*args, *kwargs.values()] if isinstance(v, _PrefixView)), None)
    if view is None:
        return 0
    return sum(t.numel() * t.element_size() for layer in view._layers for t in (layer.keys, layer.values))


class MeanActions:
    """``M_l P = mean_p A_l(p) P`` over many prompts (``(layer, P [d, c]) -> [d, c]``, the Krylov basis's
    mean action), blockwise: chunks of :class:`BatchBlocks` with their states, all prompts and all
    columns of a chunk in one call of one block. Block 0's products (Arnoldi's, one after another) go
    through each chunk's kept graph (:func:`~lldd_core.forward.jvp.kept_operator`); the others are
    vmapped JVPs. Built by :func:`mean_actions`, used inside its ``with`` body."""

    def __init__(self, chunks: list[tuple[BatchBlocks, torch.Tensor]]) -> None:
        self.chunks = chunks  # (blocks, states [N, L + 1, d])
        self.n = sum(X.shape[0] for _, X in chunks)
        self._kept: list[Callable[[torch.Tensor], torch.Tensor]] | None = None

    def __call__(self, layer: int, P: torch.Tensor) -> torch.Tensor:
        if layer == 0:
            if self._kept is None:
                self._kept = [blocks.operator(0, X[:, 0]) for blocks, X in self.chunks]
            parts = [op(P) for op in self._kept]  # [N, d, c] each
        else:
            parts = [blocks.actions(layer, X[:, layer], P) for blocks, X in self.chunks]
        return sum(part.sum(0) for part in parts) / self.n


@contextlib.contextmanager
def mean_actions(model: nn.Module, adapter: FamilyAdapter, sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
                 batch_size: int = 32, max_cache_bytes: int = 1 << 30) -> Iterator[MeanActions | None]:
    """:class:`MeanActions` of ``sequences`` for the ``with`` body (the live mode entered once), or ``None``
    when their prefix caches would take more than ``max_cache_bytes`` (estimated from the first chunk):
    the caller then uses the full-sequence path, which keeps nothing."""
    chunks: list[tuple[BatchBlocks, torch.Tensor]] = []
    kept_bytes, seen = 0, 0
    with live_mode(model, adapter), torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            blocks = batch_blocks(model, adapter, chunk, pad_id=pad_id)
            kept_bytes, seen = kept_bytes + _cache_bytes(blocks), seen + len(chunk)
            if kept_bytes * len(sequences) / seen > max_cache_bytes:
                chunks.clear()
                yield None
                return
            blocks._live = True
            chunks.append((blocks, blocks.states()))
        try:
            yield MeanActions(chunks)
        finally:
            for blocks, _ in chunks:
                blocks._live = False


def _stubs(blocks: nn.ModuleList, record: list) -> list[tuple[nn.Module, Any]]:
    """Forwards that record ``(args, kwargs)`` and pass the hidden state on unchanged; the last one stops."""
    last = len(blocks) - 1

    def stub(j: int) -> Any:
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            record.append((args, kwargs))
            if j == last:
                raise hk.StopForward
            return hk.hidden_input(args, kwargs)

        setattr(forward, STUB_MARK, True)
        return forward

    return [(block, stub(j)) for j, block in enumerate(blocks)]


def _frozen(value: Any, view: _PrefixView | None) -> Any:
    return view if view is not None and isinstance(value, Cache) else value


def _record(model: nn.Module, adapter: FamilyAdapter, last: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            cache: Cache | None) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """The last tokens ``last`` ``[N, 1]`` through the model with every block stubbed: ``x_0`` ``[N, d]`` and
    each block's arguments, the cache among them replaced by a :class:`_PrefixView`."""
    blocks = adapter.layers(model)
    record: list[tuple[tuple, dict]] = []
    if cache is not None and not all(type(layer) in _COPY_ON_WRITE for layer in cache.layers):
        raise TypeError(f"blockwise calls need a dynamic KV cache, got {sorted({type(x).__name__ for x in cache.layers})}")
    with live_mode(model, adapter), torch.no_grad(), replaced_forwards(_stubs(blocks, record)):
        hk.run_until(model, input_ids=last, attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=cache is not None)
    if len(record) != len(blocks):
        raise RuntimeError(f"the model called {len(record)} of its {len(blocks)} blocks for one token")
    view = _PrefixView(cache) if cache is not None else None
    arguments = []
    for args, kwargs in record:
        rest = args[1:] if args else ()
        kw = {k: _frozen(v, view) for k, v in kwargs.items() if not (not args and k == "hidden_states")}
        arguments.append((tuple(_frozen(a, view) for a in rest), kw))
    return hk.hidden_input(*record[0])[:, 0], arguments


def blocks_of(model: nn.Module, adapter: FamilyAdapter, input_ids: torch.Tensor, cache: Cache | None) -> PromptBlocks:
    """:class:`PromptBlocks` of a prompt whose prefix (``input_ids[:-1]``) left ``cache`` (``None`` for one token):
    the last token through the model with every block stubbed (module doc)."""
    T = input_ids.shape[0]
    device = input_device(model)
    x0, arguments = _record(model, adapter, input_ids[-1:].reshape(1, 1).to(device),
                            torch.ones(1, T, dtype=torch.long, device=device),
                            torch.full((1, 1), T - 1, dtype=torch.long, device=device), cache)
    return PromptBlocks(model, adapter, input_ids, x0[0], arguments)


def batch_blocks(model: nn.Module, adapter: FamilyAdapter, sequences: Sequence[Sequence[int]], *,
                 pad_id: int = 0) -> BatchBlocks:
    """:class:`BatchBlocks` of many prompts, left-padded to one length (the attention mask hides the padding,
    positions count real tokens): their prefixes in one batched pass, then the recording pass."""
    ids, mask = pad_batch(sequences, pad_id, "left")
    device = input_device(model)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = None
    if ids.shape[1] > 1:
        with live_mode(model, adapter), torch.no_grad():
            cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                          use_cache=True).past_key_values
    x0, arguments = _record(model, adapter, ids[:, -1:], mask, positions[:, -1:], cache)
    return BatchBlocks(model, adapter, x0, arguments)


def prompt_blocks(model: nn.Module, adapter: FamilyAdapter, input_ids: Sequence[int] | torch.Tensor) -> PromptBlocks:
    """Run the prefix of one prompt once (KV cache kept) and record how the model calls each block for
    its last token (module doc): ``L`` block evaluations of ``T - 1`` tokens in all."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("empty prompt")
    cache = None
    if ids.numel() > 1:
        device = input_device(model)
        with live_mode(model, adapter), torch.no_grad():
            prefix = ids[:-1].unsqueeze(0).to(device)
            cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True).past_key_values
    return blocks_of(model, adapter, ids, cache)

