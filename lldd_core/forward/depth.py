"""Depth dynamics of the last token: states, frozen-context block maps, their Jacobians, gains.

Conventions (DESIGN.md, "depth is time"): ``x_0`` enters block 0, block ``l`` maps ``x_l`` to
``x_{l+1}``, ``x_L`` leaves the last block **before** the final norm (this module never applies
the final norm; Hugging Face's ``hidden_states[-1]`` is the normed output, which is why states are
taken with hooks, not from ``output_hidden_states``).

* **States**: the last non-padding token's ``x_0 .. x_L`` for a batch of prompts, left or right
  padded, with position ids taken from the attention mask so padding never shifts positions.
* **Frozen-context map** ``x_{l+1} = f_l(x_l)``: the last token re-evaluated through block ``l``
  with every earlier token's keys and values held fixed (exact for a causal model). A
  :class:`PromptContext` runs the prefix once and keeps its KV cache; each evaluation runs the
  last token alone on a copy of that cache, replacing its input at block ``l``.
* ``A_l = ∂f_l/∂x_l`` applied to directions by forward-mode AD (vmapped JVPs; the eager softmax
  path, which has forward AD); where a model has none (quantized or offloaded layers) by
  reverse over reverse or central differences, said in a notice (:mod:`lldd_core.forward.jvp`).
* **Gains** of a concept injection ``x_k <- x_k + u v_k`` at the last token on the readout
  ``w^T x_L``: *measured* ``(w^T x_L(u = ε) - w^T x_L) / ε`` for every ``k`` in one batched pass;
  *exact linear* ``∂(w^T x_L)/∂x_k · v_k`` for every ``k`` from one backward pass.

All model calls run in :func:`~lldd_core.forward.linearize.live_mode` (the ordinary model with an eager
attention path), so values, JVPs and gradients see the same function.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.arch import FamilyAdapter
from ..models.placement import input_device, model_dtype
from ..progress import ProgressFn
from . import hooks as hk
from .jvp import columns
from .linearize import live_mode

Transform = Callable[[torch.Tensor], torch.Tensor]


def _block_hooks(
    blocks: nn.ModuleList,
    *,
    replace: dict[int, Transform] | None = None,
    capture_inputs: Sequence[int] = (),
    capture_outputs: Sequence[int] = (),
    stop_after: int | None = None,
    out: dict,
) -> contextlib.AbstractContextManager[None]:
    """Transform block inputs (``replace[j](x)``), record block inputs/outputs, stop after a block.

    ``out[("in", j)]`` is block ``j``'s input after its transform, ``out[("out", j)]`` its output;
    with ``stop_after`` the forward raises :class:`~lldd_core.forward.hooks.StopForward` after that
    block (run it with :func:`~lldd_core.forward.hooks.run_until`). Every hook is removed on exit,
    also on error.
    """
    replace = replace or {}
    registrations: list[hk.Hook] = []
    for j in sorted(set(replace) | set(capture_inputs)):
        if j in replace:  # registered first, so the capture records the transformed input
            registrations.append(hk.replace_input(blocks[j], replace[j]))
        if j in capture_inputs:
            registrations.append(hk.capture(blocks[j], out, ("in", j), at="input"))
    for j in sorted(set(capture_outputs) | ({stop_after} if stop_after is not None else set())):
        if j == stop_after:
            registrations.append(hk.stop_after(blocks[j], out, ("out", j)))
        else:
            registrations.append(hk.capture(blocks[j], out, ("out", j)))
    return hk.hooks(*registrations)


def _device(model: nn.Module) -> torch.device:
    return input_device(model)


# --- states of many prompts ----------------------------------------------------------------------


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, T_max]`` with padding on ``side`` (``"left"``/``"right"``)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, seq in enumerate(sequences):
        if side == "left":
            ids[b, width - len(seq):] = torch.tensor(seq)
            mask[b, width - len(seq):] = 1
        else:
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
    return ids, mask


def last_token_states(
    model: nn.Module,
    adapter: FamilyAdapter,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    side: str = "left",
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """``x_0 .. x_L`` of each sequence's last token, ``[N, L + 1, d]`` (float64).

    Batched with padding on ``side``; the attention mask hides the padding and the position ids
    count real tokens only, so each row equals its unbatched forward.
    """
    blocks = adapter.layers(model)
    L = len(blocks)
    device = _device(model)
    rows: list[np.ndarray] = []
    with live_mode(model, adapter), torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            ids, mask = pad_batch(chunk, pad_id, side)
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            last = mask.sum(-1) - 1 if side == "right" else torch.full((len(chunk),), ids.shape[1] - 1, device=device)
            out: dict = {}
            with _block_hooks(blocks, capture_inputs=[0], capture_outputs=range(L), stop_after=L - 1, out=out):
                hk.run_until(model, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            batch = torch.arange(len(chunk), device=device)
            per_layer = [out[("in", 0)]] + [out[("out", j)] for j in range(L)]
            rows.append(torch.stack([h[batch, last] for h in per_layer], dim=1).double().cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(sequences)) / len(sequences), "Hidden states")
    return np.concatenate(rows)


def last_token_actions(
    model: nn.Module,
    adapter: FamilyAdapter,
    sequences: Sequence[Sequence[int]],
    layer: int,
    P: torch.Tensor,
    *,
    pad_id: int = 0,
    batch_size: int = 32,
) -> torch.Tensor:
    """``A_l(p) P`` for many prompts at once, ``[N, d, r]`` (``P``: ``[d, r]``).

    A causal model's last token does not influence earlier tokens, so a tangent entered at the
    last position of block ``l``'s input sees exactly the frozen-context map: a full-sequence
    forward (left-padded batch of prompts) with the dual added there, vmapped over the columns of
    ``P``, gives every prompt's action in one pass per chunk of prompts.
    """
    blocks = adapter.layers(model)
    device = _device(model)
    dtype = model_dtype(model)
    out_rows: list[torch.Tensor] = []
    zero = torch.zeros(P.shape[0], dtype=dtype, device=device)
    # no_grad: forward-mode AD ignores it, and without it every action would keep a backward graph
    # through the weights alive
    with live_mode(model, adapter), torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            ids, mask = pad_batch(sequences[start : start + batch_size], pad_id, "left")
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)

            def f(delta: torch.Tensor, ids: torch.Tensor = ids, mask: torch.Tensor = mask,
                  positions: torch.Tensor = positions) -> torch.Tensor:
                def add_last(h: torch.Tensor) -> torch.Tensor:
                    bump = torch.zeros_like(h[:, :-1])
                    return h + torch.cat([bump, delta.to(h.dtype).expand(h.shape[0], 1, -1)], dim=1)

                out: dict = {}
                with _block_hooks(blocks, replace={layer: add_last}, stop_after=layer, out=out):
                    hk.run_until(model, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
                return out[("out", layer)][:, -1]

            cols = columns(model, f, zero, P.T.to(dtype))  # [r, n, d]
            out_rows.append(cols.permute(1, 2, 0))
    return torch.cat(out_rows)


# --- one prompt's frozen context -----------------------------------------------------------------


@dataclass
class PromptContext:
    """One prompt with its prefix run once: the KV cache of tokens ``0..T-2`` and the last token's states."""

    model: nn.Module
    adapter: FamilyAdapter
    input_ids: torch.Tensor  # [T]
    cache: object | None  # the prefix's KV cache (None for a one-token prompt)
    states: torch.Tensor  # [L + 1, d]: x_0 .. x_L of the last token

    @property
    def n_layers(self) -> int:
        return self.states.shape[0] - 1

    def run_last(
        self,
        batch: int,
        *,
        replace: dict[int, Transform] | None = None,
        capture_inputs: Sequence[int] = (),
        capture_outputs: Sequence[int] = (),
        stop_after: int | None = None,
    ) -> dict:
        """Run the last token alone (``batch`` copies) over a copy of the prefix cache, with hooks."""
        T = self.input_ids.shape[0]
        device = self.states.device
        ids = self.input_ids[-1:].expand(batch, 1).to(device)
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)  # the forward appends to it; the prefix must stay as it is
            if batch > 1:
                cache.batch_repeat_interleave(batch)
        out: dict = {}
        blocks = self.adapter.layers(self.model)
        with _block_hooks(blocks, replace=replace, capture_inputs=capture_inputs, capture_outputs=capture_outputs,
                          stop_after=stop_after, out=out):
            hk.run_until(
                self.model,
                input_ids=ids,
                attention_mask=torch.ones(batch, T, dtype=torch.long, device=device),
                position_ids=torch.full((batch, 1), T - 1, dtype=torch.long, device=device),
                past_key_values=cache,
                use_cache=cache is not None,
            )
        return out

    # --- the block maps ---------------------------------------------------------------------

    def block_map(self, layer: int, X: torch.Tensor) -> torch.Tensor:
        """``f_l(x)`` for each row of ``X`` ``[m, d]`` (block ``layer``, frozen context) -> ``[m, d]``."""
        with live_mode(self.model, self.adapter), torch.no_grad():
            out = self.run_last(X.shape[0], replace={layer: lambda h: X.to(h.dtype).unsqueeze(1)},
                                stop_after=layer)
        return out[("out", layer)][:, 0]

    def jacobian_actions(self, layer: int, P: torch.Tensor) -> torch.Tensor:
        """``A_l P`` for directions ``P`` ``[d, r]`` by vmapped JVPs (or :mod:`lldd_core.forward.jvp`'s fallbacks) -> ``[d, r]``."""
        x = self.states[layer]

        def f(v: torch.Tensor) -> torch.Tensor:
            out = self.run_last(1, replace={layer: lambda h: v.to(h.dtype).reshape(1, 1, -1)}, stop_after=layer)
            return out[("out", layer)][0, 0]

        with live_mode(self.model, self.adapter), torch.no_grad():  # forward AD ignores no_grad
            cols = columns(self.model, f, x, P.T.to(x.dtype))
        return cols.T

    def fd_actions(self, layer: int, P: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
        """``A_l P`` by central differences ``(f(x + h p) - f(x - h p)) / 2h`` (fallback and check)."""
        x = self.states[layer]
        Pt = P.T.to(x.dtype)
        both = self.block_map(layer, torch.cat([x + h * Pt, x - h * Pt]))
        return ((both[: Pt.shape[0]] - both[Pt.shape[0]:]) / (2 * h)).T

    # --- gains ------------------------------------------------------------------------------

    def measured_gains(self, directions: torch.Tensor, readout: torch.Tensor, eps: float,
                       layers: Sequence[int] | None = None) -> torch.Tensor:
        """``(w^T x_L(ε v_k at layer k) - w^T x_L) / ε`` for each ``k`` in ``layers`` (default ``0..L-1``).

        ``directions``: ``[L + 1, d]`` unit ``v_k``; ``readout``: ``w`` ``[d]``. Row ``i`` of one
        batched pass injects at its own layer; the unperturbed readout comes from :attr:`states`.
        """
        L = self.n_layers
        ks = list(range(L)) if layers is None else [int(k) for k in layers]
        dtype = self.states.dtype
        replace: dict[int, Transform] = {}
        for row, k in enumerate(ks):
            shift = eps * directions[k].to(dtype)

            def add(h: torch.Tensor, row: int = row, shift: torch.Tensor = shift) -> torch.Tensor:
                h = h.clone()
                h[row, 0] = h[row, 0] + shift
                return h

            previous = replace.get(k)
            replace[k] = add if previous is None else (lambda h, a=add, p=previous: a(p(h)))
        with live_mode(self.model, self.adapter), torch.no_grad():
            out = self.run_last(len(ks), replace=replace, stop_after=L - 1)
        xL = out[("out", L - 1)][:, 0]
        w = readout.to(dtype)
        return (xL @ w - self.states[L] @ w) / eps

    def readout_shifts(self, amplitudes: torch.Tensor, directions: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """``w^T x_L`` change for each row ``i`` of ``amplitudes`` ``[m, L]``: ``u_{i,l} v_l`` injected at every layer ``l``.

        All injections of a row act together (a multi-layer schedule); rows are one batched pass.
        """
        L = self.n_layers
        dtype = self.states.dtype
        U = amplitudes.to(dtype)
        replace: dict[int, Transform] = {}
        for layer in range(L):
            if not bool(U[:, layer].abs().max() > 0):
                continue
            shift = U[:, layer, None] * directions[layer].to(dtype)  # [m, d]

            def add(h: torch.Tensor, shift: torch.Tensor = shift) -> torch.Tensor:
                return h + shift[:, None, :]

            replace[layer] = add
        with live_mode(self.model, self.adapter), torch.no_grad():
            out = self.run_last(U.shape[0], replace=replace, stop_after=L - 1)
        w = readout.to(dtype)
        return out[("out", L - 1)][:, 0] @ w - self.states[L] @ w

    def exact_gains(self, directions: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """``∂(w^T x_L)/∂x_k · v_k`` for ``k = 0..L-1`` from one forward and one backward pass."""
        L = self.n_layers
        leaves: dict[int, torch.Tensor] = {}

        def as_leaf(k: int) -> Transform:
            def make(h: torch.Tensor) -> torch.Tensor:
                # a zero we differentiate against, added at the block input: d y / d z_k = d y / d x_k
                z = torch.zeros_like(h, requires_grad=True)
                leaves[k] = z
                return h + z

            return make

        with live_mode(self.model, self.adapter), torch.enable_grad():
            out = self.run_last(1, replace={k: as_leaf(k) for k in range(L)}, stop_after=L - 1)
            y = out[("out", L - 1)][0, 0] @ readout.to(self.states.dtype)
            grads = torch.autograd.grad(y, [leaves[k] for k in range(L)])
        return torch.stack([g[0, 0] @ directions[k].to(g.dtype) for k, g in enumerate(grads)])


def prompt_context(model: nn.Module, adapter: FamilyAdapter, input_ids: Sequence[int] | torch.Tensor) -> PromptContext:
    """Run the prefix of one prompt once (KV cache kept) and the last token's states ``x_0 .. x_L``."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("empty prompt")
    device = _device(model)
    cache = None
    with live_mode(model, adapter), torch.no_grad():
        if ids.numel() > 1:
            prefix = ids[:-1].unsqueeze(0).to(device)
            cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True).past_key_values
        ctx = PromptContext(model, adapter, ids, cache, torch.empty(0))
        L = len(adapter.layers(model))
        out = ctx.run_last(1, capture_inputs=[0], capture_outputs=range(L), stop_after=L - 1)
    ctx.states = torch.stack([out[("in", 0)][0, 0]] + [out[("out", j)][0, 0] for j in range(L)])
    return ctx
