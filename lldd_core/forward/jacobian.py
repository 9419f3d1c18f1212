"""Detached Jacobians of an output embedding with respect to every input position of ``x_0``.

With the model in detached mode (:mod:`lldd_core.forward.linearize`) and every additive constant multiplied
by a scalar ``s = 1`` (the *bias channel*), the map ``(x_0, s) -> y`` is jointly linear, so by
Euler's theorem

    y = sum_i J_i x_{0,i} + b,    J_i = dy/dx_{0,i}  (d_out x d_in),    b = dy/ds,

exactly, up to rounding. ``y`` is, by default, the last token's hidden state after block ``L``
passed through the final norm; ``layer=K`` takes the stream after ``K`` blocks instead, with the
final norm applied unless ``final_norm=False``. The ordinary Jacobian (``detached=False``) does not
satisfy this identity; its reconstruction error measures how nonlinear the model is at the input.

:class:`JacobianOperator` gives the products ``J_i^T u`` (one batched VJP serves all positions)
and ``sum_i J_i v_i`` (reverse-over-reverse) without forming the matrices, and :meth:`~JacobianOperator.full`
forms them with batched, chunked VJPs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import FamilyAdapter, text_config
from ..models.placement import input_device, model_dtype, scaled_biases
from ..progress import ProgressFn
from .linearize import detached_mode, live_mode
from .residual import run_to_layer

#: Budget for the activations that one chunk of batched VJPs keeps alive (accelerators).
DEFAULT_CHUNK_BYTES = 1 << 30
#: On CPU the batched VJP is fastest when one chunk's activations stay in the last-level cache
#: (bench/jacobian.py: 1.2-1.5x faster than one chunk of all d_out cotangents).
CPU_CHUNK_BYTES = 1 << 26


@dataclass
class FullJacobian:
    """``J[i]`` is ``J_i = dy/dx_{0,i}`` with shape ``[d_out, d_in]``; ``b = dy/ds``."""

    J: torch.Tensor  # [T, d_out, d_in]
    b: torch.Tensor  # [d_out]


class JacobianOperator:
    """Matrix-free access to ``y(x_0, s)`` around one input; built by :func:`jacobian_operator`.

    Holds the autograd graph of one forward pass; reverse products (``rmatvec``, ``matvec``) need
    nothing else. ``jvp``, when given, is ``(x0 [T, d_in], V [m, T, d_in]) -> J V [m, d_out]`` by
    forward-mode AD (a second forward pass through the model), used by ``matvec(..., mode="forward")``.
    """

    def __init__(
        self,
        x0: torch.Tensor,
        s: torch.Tensor,
        y: torch.Tensor,
        intermediate: int,
        jvp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._leaf = x0  # [1, T, d_in], the tensor autograd differentiates against (may be a non-leaf)
        self.x0 = x0[0].detach()  # [T, d_in]
        self.s = s  # scalar leaf
        self.y = y  # [d_out]
        self._intermediate = intermediate
        self._jvp = jvp
        self._wt: torch.Tensor | None = None  # (w, J^T w) graph for forward products

    @property
    def has_forward_mode(self) -> bool:
        return self._jvp is not None

    @property
    def n_tokens(self) -> int:
        return self.x0.shape[0]

    @property
    def d_in(self) -> int:
        return self.x0.shape[1]

    @property
    def d_out(self) -> int:
        return self.y.shape[0]

    def rmatvec(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For cotangents ``u`` ``[k, d_out]``: ``(J_i^T u)`` for all ``i`` ``[k, T, d_in]`` and ``b^T u`` ``[k]``."""
        gx, gs = torch.autograd.grad(
            self.y,
            (self._leaf, self.s),
            grad_outputs=u.to(self.y.dtype),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        if gs.shape != (u.shape[0],):  # no biases: autograd materializes one unbatched zero
            gs = torch.zeros(u.shape[0], dtype=self.y.dtype, device=self.y.device)
        return gx[:, 0], gs

    def matvec(self, v: torch.Tensor, mode: str = "reverse") -> torch.Tensor:
        """For directions ``v`` ``[k, T, d_in]``: ``sum_i J_i v_i`` ``[k, d_out]``.

        ``mode="reverse"`` (default): ``g(w) = J^T w`` is linear in ``w``; differentiating
        ``<g(w), v>`` in ``w`` gives ``J v`` (reverse over reverse, on the recorded graph; on CPU
        this measured ~2x faster than forward mode, bench/spectral.py). ``mode="forward"``: vmapped
        JVPs through a fresh forward pass (needs ``jvp``).
        """
        if mode == "forward":
            if self._jvp is None:
                raise ValueError("this operator has no forward-mode products")
            return self._jvp(self.x0, v.to(self.x0.dtype)).to(self.y.dtype)
        if mode != "reverse":
            raise ValueError(f"unknown product mode {mode!r}")
        if self._wt is None:
            w = torch.zeros_like(self.y, requires_grad=True)
            (gt,) = torch.autograd.grad(self.y, self._leaf, grad_outputs=w, create_graph=True, retain_graph=True)
            self._wt = (w, gt)
        w, gt = self._wt
        (jv,) = torch.autograd.grad(
            gt, w, grad_outputs=v.to(gt.dtype).unsqueeze(1), is_grads_batched=True, retain_graph=True, allow_unused=True,
            materialize_grads=True,
        )
        return jv

    def at(self, positions: list[int] | None) -> JacobianOperator | PositionView:
        """This operator for the input positions ``positions`` only (``None``: all of them)."""
        return self if positions is None else PositionView(self, positions)

    def chunk_size(self, budget_bytes: int | None = None) -> int:
        """How many cotangents one batched VJP may carry within ``budget_bytes`` of activations."""
        if budget_bytes is None:
            budget_bytes = CPU_CHUNK_BYTES if self.y.device.type == "cpu" else DEFAULT_CHUNK_BYTES
        per = self.n_tokens * max(self.d_in, self._intermediate) * self.x0.element_size() * 8
        return int(max(1, min(self.d_out, budget_bytes // max(per, 1))))

    def full(self, chunk: int | None = None, progress: ProgressFn | None = None) -> FullJacobian:
        """All ``J_i`` and ``b`` by batched VJPs with the identity's rows as cotangents, chunked."""
        return _full_by_vjps(self, chunk or self.chunk_size(), progress)


class PositionView:
    """``op`` restricted to the input positions ``positions`` (token indices ``i`` of ``x_{0,i}``): the same
    products, ``J_i`` only for those ``i`` (a VJP still serves them all; a direction sits in its own slot)."""

    def __init__(self, op: JacobianOperator, positions: list[int]) -> None:
        self._op = op
        self.positions = list(positions)
        self._idx = torch.tensor(self.positions, dtype=torch.long, device=op.x0.device)
        self.x0 = op.x0[self._idx]
        self.y = op.y

    n_tokens = property(lambda self: len(self.positions))
    d_in = property(lambda self: self._op.d_in)
    d_out = property(lambda self: self._op.d_out)
    has_forward_mode = property(lambda self: self._op.has_forward_mode)

    def rmatvec(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx, gs = self._op.rmatvec(u)
        return gx[:, self._idx], gs

    def matvec(self, v: torch.Tensor, mode: str = "reverse") -> torch.Tensor:
        full = torch.zeros(v.shape[0], self._op.n_tokens, self.d_in, dtype=v.dtype, device=v.device)
        full[:, self._idx] = v
        return self._op.matvec(full, mode=mode)

    def chunk_size(self, budget_bytes: int | None = None) -> int:
        return self._op.chunk_size(budget_bytes)

    def full(self, chunk: int | None = None, progress: ProgressFn | None = None) -> FullJacobian:
        """These positions' ``J_i`` (``[len(positions), d_out, d_in]``) and ``b``, by chunked batched VJPs."""
        return _full_by_vjps(self, chunk or self.chunk_size(), progress)


def _full_by_vjps(op: JacobianOperator | PositionView, chunk: int, progress: ProgressFn | None) -> FullJacobian:
    """``op``'s ``J_i`` (one per position it serves) and ``b`` by batched VJPs, the identity's rows as cotangents,
    ``chunk`` rows at a time."""
    eye = torch.eye(op.d_out, dtype=op.y.dtype, device=op.y.device)
    J = torch.empty(op.n_tokens, op.d_out, op.d_in, dtype=op.y.dtype, device=op.y.device)
    b = torch.empty(op.d_out, dtype=op.y.dtype, device=op.y.device)
    for start in range(0, op.d_out, chunk):
        stop = min(start + chunk, op.d_out)
        gx, gs = op.rmatvec(eye[start:stop])
        J[:, start:stop, :] = gx.transpose(0, 1)
        b[start:stop] = gs
        if progress is not None:
            progress(stop / op.d_out, f"Jacobian rows {stop}/{op.d_out}")
    return FullJacobian(J=J, b=b)


def _intermediate_size(model: nn.Module) -> int:
    cfg = text_config(model.config)
    for attr in ("intermediate_size", "n_inner"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    return 4 * cfg.hidden_size


def jacobian_operator(
    model: nn.Module,
    adapter: FamilyAdapter,
    input_ids: torch.Tensor,
    *,
    layer: int | None = None,
    final_norm: bool = True,
    detached: bool = True,
    position: int = -1,
) -> JacobianOperator:
    """One forward pass that records the graph of ``y`` as a function of ``x_0`` and ``s``.

    Args:
        input_ids: ``[T]`` or ``[1, T]`` token ids (one sequence).
        layer: output after this many blocks (``1..L``); default ``L``.
        final_norm: apply the model's final norm to ``x_layer`` (the reference's layer-view convention).
        detached: detached mode (exact local linear map) or the ordinary model.
        position: which token's output is ``y`` (default: the last).
    """
    ids = input_ids.reshape(1, -1)
    n_layers = len(adapter.layers(model))
    layer = n_layers if layer is None else layer
    mode = detached_mode if detached else live_mode
    device = input_device(model)
    s = torch.ones((), dtype=model_dtype(model), device=device, requires_grad=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mode(model, adapter))
        stack.enter_context(torch.enable_grad())
        # every additive constant (linear and norm biases, the final norm's too) becomes s * bias:
        # the detached map is jointly linear in (x_0, s), so dy/ds is the bias channel
        stack.enter_context(scaled_biases(adapter.text_modules(model), s))
        run = run_to_layer(model, adapter, ids.to(device), layer, track_x0=True)
        out = adapter.final_norm(model)(run.xk) if final_norm else run.xk
        y = out[0, position]
    jvp = _layer_jvp(model, adapter, ids.to(device), layer, final_norm, position) if detached else None
    return JacobianOperator(x0=run.x0, s=s, y=y, intermediate=_intermediate_size(model), jvp=jvp)


def _layer_jvp(
    model: nn.Module, adapter: FamilyAdapter, ids: torch.Tensor, layer: int, final_norm: bool, position: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Forward-mode products ``J V`` of the detached map ``x_0 -> y``, vmapped over directions.

    Forward AD needs an attention path that has it: detached mode uses the family's eager softmax.
    """

    def f(x0: torch.Tensor) -> torch.Tensor:
        out = run_to_layer(model, adapter, ids, layer, x0=x0.unsqueeze(0)).xk
        return (adapter.final_norm(model)(out) if final_norm else out)[0, position]

    def products(x0: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        with detached_mode(model, adapter):
            return torch.vmap(lambda v: torch.func.jvp(f, (x0,), (v,))[1])(V)

    return products


def reconstruct(J: torch.Tensor, x0: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_i J_i x_{0,i} + b`` for ``J`` ``[T, d_out, d_in]`` and ``x0`` ``[T, d_in]``."""
    return torch.einsum("tod,td->o", J, x0.to(J.dtype)) + b


def relative_error(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    """``||y - y_hat|| / ||y||`` (in float64)."""
    y64 = y.detach().double()
    return float(torch.linalg.vector_norm(y64 - y_hat.detach().double()) / torch.linalg.vector_norm(y64))
