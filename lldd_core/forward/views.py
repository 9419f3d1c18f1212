"""Layer views of the detached model: every block's maps from one recorded forward pass.

Views are keyed ``(site, k)`` with ``k`` in ``1..L`` the index of the stream ``x_k`` the view writes
into (:mod:`lldd_core.layering`): block ``b = k - 1`` reads ``x_{k-1}`` and writes ``x_k``. For the last
token's output ``y``, four *sites* give a linear map ``y = sum_i J_i z_i`` of some input ``z``:

* ``cumulative`` (layer ``k``): ``z = x_0``, ``y = x_k`` (the stream after ``k`` blocks);
* ``block`` (block ``k - 1``): ``z = x_{k-1}`` (the block's input), ``y = x_k`` (its output);
* ``attention`` / ``mlp`` (block ``k - 1``): ``z = x_0``, ``y`` = the attention / MLP term that block
  ``k - 1`` adds to the residual stream to make ``x_k`` (after any post-norm, before the add: the
  adapter's ``sublayer``, times its residual multiplier, Granite's ``residual_multiplier``).

With ``lens=True`` (the reference's convention, "logit lens") ``y`` passes through the model's
final norm (its detached scale computed from that very output) so every view lives in the output
space the unembedding reads; with ``lens=False`` ``y`` is the raw stream or term.

One forward pass in detached mode records all of them: ``x_0`` is a leaf, block inputs are
intermediate tensors of the same graph, so a VJP from any view's output back to its input costs
one backward pass through the blocks it spans. Forward products (``J v``) run the model again with
a dual tensor entered at the view's input, vmapped over the directions (:func:`view_jvp`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..layering import BLOCK_SITES, SITE_LABELS  # noqa: F401 (the views' names, re-exported)
from ..models.arch import FamilyAdapter
from ..models.placement import input_device, model_dtype
from . import hooks as hk
from .jacobian import JacobianOperator, _intermediate_size
from .linearize import detached_mode

SITES: tuple[str, ...] = ("cumulative", "block", "attention", "mlp")


def _recording_hooks(
    layers: nn.ModuleList,
    adapter: FamilyAdapter,
    *,
    enter_block: int,
    x_in: torch.Tensor | None,
    capture: Sequence[tuple[str, int]],
    stop_after: int,
    out: dict,
    term_scale: float = 1.0,
) -> contextlib.AbstractContextManager[None]:
    """Replace block ``enter_block``'s input (``x_in``, or a fresh leaf of the model's own when None),
    record block inputs/outputs and sub-layer terms for ``capture`` (``(site, k)``, 1-based ``k``),
    and stop the forward after 0-based block ``stop_after``. Hooks are removed on exit. Sub-layer terms
    are recorded times ``term_scale`` (the adapter's residual multiplier): what the block adds."""

    def enter(current: torch.Tensor) -> torch.Tensor:
        if x_in is None:
            new = current.detach().requires_grad_(True)
        else:
            if x_in.shape != current.shape:
                raise ValueError(f"input has shape {tuple(x_in.shape)}, the model expects {tuple(current.shape)}")
            new = x_in
        out["input"] = new
        return new

    # registration order matters: the entry hook runs before a block-input capture on the same block
    registrations = [hk.replace_input(layers[enter_block], enter)]
    for site, k in capture:
        block = layers[k - 1]
        if site in ("cumulative", "block") and k - 1 != stop_after:
            registrations.append(hk.capture(block, out, ("block", k)))
        if site == "block":
            registrations.append(hk.capture(block, out, ("input", k), at="input"))
        if site in ("attention", "mlp"):
            scaled = None if term_scale == 1.0 else (lambda h: h * term_scale)
            registrations.append(hk.capture(adapter.sublayer(block, site), out, (site, k), select=scaled))
    registrations.append(hk.stop_after(layers[stop_after], out, ("block", stop_after + 1)))
    return hk.hooks(*registrations)


def _run(model: nn.Module, input_ids: torch.Tensor) -> None:
    ids = input_ids.reshape(1, -1).to(input_device(model))
    # explicit all-ones mask: a pad id that doubles as BOS must not be taken for padding
    hk.run_until(model, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _output(raw: torch.Tensor, norm: nn.Module, lens: bool, position: int) -> torch.Tensor:
    return (norm(raw) if lens else raw)[0, position]


@dataclass
class ViewRecording:
    """The graph of one detached forward: ``operators[(site, k)]`` gives each view's products."""

    x0: torch.Tensor  # [T, d], detached
    operators: dict[tuple[str, int], JacobianOperator]
    n_layers: int
    lens: bool


def record_views(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    *,
    sites: Sequence[str] = SITES,
    layers: Sequence[int] | None = None,
    lens: bool = True,
    position: int = -1,
    forward_products: bool = True,
) -> ViewRecording:
    """One detached forward pass recording every requested ``(site, k)`` view (see the module doc).

    ``forward_products`` attaches :func:`view_jvp` to each operator (``J v`` by forward AD) besides
    the default reverse-over-reverse ``matvec``.
    """
    unknown = set(sites) - set(SITES)
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}; choose from {SITES}")
    blocks = adapter.layers(model)
    n_layers = len(blocks)
    ks = list(range(1, n_layers + 1)) if layers is None else [int(k) for k in layers]
    if not ks or not all(1 <= k <= n_layers for k in ks):
        raise ValueError(f"layers must lie in 1..{n_layers}")
    capture = [(s, k) for s in sites for k in ks]
    out: dict = {}
    norm = adapter.final_norm(model)
    dtype, device = model_dtype(model), input_device(model)
    dummy_s = torch.ones((), dtype=dtype, device=device, requires_grad=True)  # views carry no bias channel
    inter = _intermediate_size(model)
    operators: dict[tuple[str, int], JacobianOperator] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(detached_mode(model, adapter))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(
            _recording_hooks(blocks, adapter, enter_block=0, x_in=None, capture=capture, stop_after=max(ks) - 1, out=out,
                             term_scale=adapter.residual_multiplier(model))
        )
        _run(model, input_ids)
        x0 = out["input"]
        for site, k in capture:
            y = _output(out[("block" if site in ("cumulative", "block") else site, k)], norm, lens, position)
            z = out[("input", k)] if site == "block" else x0
            jvp = view_jvp(model, adapter, input_ids, site, k, lens=lens, position=position) if forward_products else None
            operators[(site, k)] = JacobianOperator(x0=z, s=dummy_s, y=y, intermediate=inter, jvp=jvp)
    return ViewRecording(x0=x0[0].detach(), operators=operators, n_layers=n_layers, lens=lens)


def view_jvp(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    site: str,
    k: int,
    *,
    lens: bool = True,
    position: int = -1,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(z, V) -> [J v for v in V]`` for view ``(site, k)`` at input ``z`` ``[T, d]``, by forward AD.

    The model runs again in detached mode with the dual tensor entered at the view's input block;
    ``torch.func.vmap`` over ``torch.func.jvp`` carries all directions ``V`` ``[m, T, d]`` in one
    pass (the primal is computed once). Needs forward AD through attention: detached mode routes it
    through the family's eager softmax, which has it (CPU flash SDPA does not).
    """
    blocks = adapter.layers(model)
    norm = adapter.final_norm(model)
    enter_block = k - 1 if site == "block" else 0
    key = ("block" if site in ("cumulative", "block") else site, k)

    def f(z: torch.Tensor) -> torch.Tensor:
        out: dict = {}
        with _recording_hooks(blocks, adapter, enter_block=enter_block, x_in=z.unsqueeze(0),
                              capture=[(site, k)], stop_after=k - 1, out=out,
                              term_scale=adapter.residual_multiplier(model)):
            _run(model, input_ids)
        return _output(out[key], norm, lens, position)

    def products(z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        with detached_mode(model, adapter):
            return torch.vmap(lambda v: torch.func.jvp(f, (z,), (v,))[1])(V)

    return products
