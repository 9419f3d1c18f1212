"""Jacobian-vector products ``J p`` of a function of activations, with fallbacks that say so.

Three ways to get the columns ``J p_1 .. J p_r`` of ``f: x -> y`` at ``x``:

* ``forward``: vmapped forward-mode JVPs (``torch.func``): one batched forward, the fastest;
* ``reverse``: reverse over reverse. ``g(w) = J^T w`` is linear in ``w``, so differentiating
  ``<g(w), p>`` in ``w`` gives ``J p``; one forward, then batched backward passes. Needs only
  ordinary autograd, so it works where forward AD does not: layers without forward-mode formulas
  (quantized bitsandbytes matmuls) and modules whose weights accelerate loads per call (disk or
  CPU offload, which functorch transforms cannot see through);
* ``fd``: central differences ``(f(x + h p) - f(x - h p)) / 2h`` (no derivatives at all; accurate
  to about ``h^2`` relative, and to the dtype's rounding over ``h``).

:func:`columns` uses the model's mode (:func:`model_mode`) and, when a mode fails, falls back to
the next one, remembers that on the model and records a notice (:func:`notice`) that pages and the
CLI show, so the user knows the products are slower (or approximate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ..models.placement import offloaded

MODES = ("forward", "reverse", "fd")
_MODE_ATTR = "_lldd_jvp_mode"
_NOTICE_ATTR = "_lldd_jvp_notice"
_log = logging.getLogger(__name__)

Fn = Callable[[torch.Tensor], torch.Tensor]


def _quantized(model: nn.Module) -> bool:
    return any(type(m).__module__.split(".")[0] == "bitsandbytes" for m in model.modules())


def model_mode(model: nn.Module) -> str:
    """The product mode for ``model``: ``forward`` unless it is known not to work (quantized layers,
    offloaded weights) or failed before on this model."""
    mode = getattr(model, _MODE_ATTR, None)
    if mode is None:
        mode = "reverse" if _quantized(model) or offloaded(model) else "forward"
        if mode == "reverse":
            _set_notice(model, "reverse", "quantized or offloaded layers have no forward-mode AD")
        setattr(model, _MODE_ATTR, mode)
    return mode


def notice(model: nn.Module) -> str | None:
    """Why this model's Jacobian products do not use forward mode, or ``None``."""
    return getattr(model, _NOTICE_ATTR, None)


def _set_notice(model: nn.Module, mode: str, why: str) -> None:
    how = ("reverse-over-reverse (exact, about 2x slower)" if mode == "reverse"
           else "central finite differences (approximate, error ~1e-4 relative in float32)")
    text = f"Jacobian products use {how}: {why}."
    if getattr(model, _NOTICE_ATTR, None) != text:
        _log.warning(text)
    setattr(model, _NOTICE_ATTR, text)


def jvp_columns(f: Fn, x: torch.Tensor, P: torch.Tensor, mode: str, h: float = 1e-4) -> torch.Tensor:
    """``J p`` for each row ``p`` of ``P`` ``[r, *x.shape]`` -> ``[r, *f(x).shape]`` (``mode``: see module doc)."""
    if mode == "forward":
        return torch.vmap(lambda p: torch.func.jvp(f, (x,), (p,))[1])(P)
    if mode == "reverse":
        return kept_operator(f, x)(P)  # one product of the kept reverse-over-reverse graph, adjoint-checked
    if mode == "fd":
        with torch.no_grad():
            return torch.stack([(f(x + h * p) - f(x - h * p)) / (2 * h) for p in P])
    raise ValueError(f"unknown product mode {mode!r}; choose one of {', '.join(MODES)}")


_ADJOINT_TOL = {torch.float64: 1e-8, torch.float32: 1e-3}


def _adjoint_check(y: torch.Tensor, x: torch.Tensor, jp: torch.Tensor, p: torch.Tensor) -> None:
    """``<u, J p> = <J^T u, p>`` for a fixed random ``u``: a backward that is not differentiable
    everywhere (``once_differentiable`` kernels) silently drops paths from reverse over reverse."""
    u = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(y)
    (jt_u,) = torch.autograd.grad(y, x, grad_outputs=u, retain_graph=True)  # kept_operator goes on using it
    lhs, rhs = float((u * jp).double().sum()), float((jt_u * p).double().sum())
    scale = float(u.double().norm() * jp.double().norm()) + float(jt_u.double().norm() * p.double().norm())
    if abs(lhs - rhs) > _ADJOINT_TOL.get(y.dtype, 5e-2) * max(scale, 1e-30):
        raise RuntimeError(f"reverse over reverse misses part of the graph (<u, Jp> = {lhs:.6g}, <J^T u, p> = {rhs:.6g})")


def columns(model: nn.Module, f: Fn, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """:func:`jvp_columns` in the model's mode, falling back (and saying so) when a mode fails."""
    mode = model_mode(model)
    while True:
        try:
            return jvp_columns(f, x, P, mode)
        except (RuntimeError, NotImplementedError) as err:
            if mode == "fd" or isinstance(err, torch.OutOfMemoryError):
                raise
            following = MODES[MODES.index(mode) + 1]
            _set_notice(model, following, f"{mode} mode failed ({str(err).splitlines()[0][:120]})")
            setattr(model, _MODE_ATTR, following)
            mode = following


def kept_operator(f: Fn, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``P -> J P`` of ``f`` at ``x`` for many ``P`` ``[r, *x.shape]`` asked one after another (Arnoldi).

    Reverse over reverse (as the ``reverse`` mode) with the forward and the first backward kept:
    each product is then one batched backward through them, with no forward and no Python per op,
    several times cheaper than a forward-mode JVP of one column. The first product is checked
    against the adjoint identity (:func:`_adjoint_check`); a graph that fails it raises
    ``RuntimeError`` there, so a caller can fall back to :func:`columns`.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        y = f(xr)
        w = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, xr, grad_outputs=w, create_graph=True)
    if not g.requires_grad:
        raise RuntimeError("reverse over reverse: the backward pass is not differentiable")
    checked = False

    def apply(P: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        with torch.enable_grad():
            (cols,) = torch.autograd.grad(g, w, grad_outputs=P.to(g.dtype), is_grads_batched=True, retain_graph=True)
            if not checked:
                _adjoint_check(y, xr, cols[0], P[0])
                checked = True
        return cols.detach()

    return apply
