"""Interventions on the residual stream during a forward pass or a whole generation, by hooks.

Conventions (DESIGN.md, "depth is time"): ``x_l`` enters block ``l``; ``x_{l+1}`` leaves it.

* :class:`AddVectors` adds ``w_l`` to ``x_l`` (block ``l``'s input) at the last position or at
  every real position: additive concept steering ``α v_l`` (ActAdd/CAA style) and LLV schedules
  ``u_l v_l``.
* :class:`LQRFeedback` adds ``u_k = K_k e_k`` to block ``k``'s output (or, ``at="input"``, to its
  input before it runs) at the last position, with ``e_k = (β_k - v_k^T x_k) v_k`` read from block
  ``k``'s input: since ``e_k`` is a multiple of ``v_k``, ``u_k = (β_k - v_k^T x_k) (K_k v_k)`` — one
  dot product and one scaled vector per layer and token, no Jacobian in the loop.
* :class:`JacobianSteering` applies a steering phrase's detached Jacobian ``J_i`` (``x_0`` of its
  token ``i`` to its last token's state) to the new text's inputs, ``a_k = Σ_{j≤k} J_{j mod T_s}
  x_{0,j}`` (running sum over the positions ``k`` of the new text), in one of three variants:

  ============  ==========================================  ===========================  ==============
  variant       ``J`` maps ``x_0`` to                        update at every position k   unsteered at
  ============  ==========================================  ===========================  ==============
  ``blend``     ``x_ℓ`` (no final norm); ``a_k += b``        ``x_ℓ ← λ x_ℓ + (1-λ) a_k``    ``λ = 1``
  ``additive``  ``x_ℓ`` (no final norm); ``a_k += b``        ``x_ℓ ← x_ℓ + λ a_k ‖x_ℓ‖/(2‖a_k‖)``  ``λ = 0``
  ``reference`` ``norm(x_ℓ)`` (final norm applied), no b     ``x_{ℓ-1} ← x_{ℓ-1} + λ a_k ‖x_{ℓ-1}‖/(2‖a_k‖)``  ``λ = 0``
  ============  ==========================================  ===========================  ==============

  ``blend`` is the paper's eq. 16; ``reference`` is the public reference implementation's recipe
  exactly (its ``apply_steering_operator``: ``ℓ = 2L//3``, λ ≈ 1.028, the vector added at the
  input of block ``ℓ - 1``, one block before the state its Jacobian maps to; it has no bias
  term); ``additive`` is that norm-matched addition at the state ``J`` maps to. ``b`` is the
  phrase's bias channel (``x_ℓ = Σ_i J_i x_{0,i} + b``; zero for bias-free families), so ``a_k``
  is the phrase's own affine map applied to the new text.

:func:`intervene` registers the hooks of any set of interventions and always removes them. It
also tracks positions across the forwards of one generation (the prompt, then one token at a
time with the KV cache), so left-padded batches steer the same real positions as single prompts:
padding never counts as a position and is never modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import FamilyAdapter
from .hooks import Hook, capture, hooks, on_input, replace_input, replace_output

#: Where additive steering writes: ``last`` — the last position of *every* forward pass (the
#: prompt's last token, then each generated token as it is fed back); ``all`` — every real position
#: of every forward; ``prompt`` — the prompt's last token only (the first forward), generated tokens
#: are left alone.
POSITIONS = ("last", "all", "prompt")
#: Where LQR feedback writes: block ``k``'s output (the reference's ``B = I``) or its input (``B_k = A_k``).
LQR_AT = ("output", "input")


@dataclass
class Positions:
    """The real-token positions of the tokens in the current forward, ``[B, t]`` (``-1`` for padding)."""

    pad: torch.Tensor | None = None  # [B] left-padding lengths of the prompt batch
    seen: torch.Tensor | None = None  # [B] real tokens processed so far
    current: torch.Tensor | None = None  # [B, t]
    forwards: int = 0  # forwards started so far (1 while the prompt runs)

    def start_forward(self, t: int, device: torch.device) -> None:
        """Called at block 0's input of every forward: the first one holds the (padded) prompt."""
        self.forwards += 1
        steps = torch.arange(t, device=device)
        if self.seen is None:
            pad = self.pad.to(device) if self.pad is not None else torch.zeros(1, dtype=torch.long, device=device)
            self.current = steps[None, :] - pad[:, None]
        else:
            self.current = self.seen.to(device)[:, None] + steps[None, :]
        self.current = torch.where(self.current >= 0, self.current, torch.full_like(self.current, -1))
        self.seen = self.current.max(dim=1).values + 1

    @property
    def valid(self) -> torch.Tensor:
        return self.current >= 0


class Intervention:
    """Base class: the hooks to register on the blocks, in order (:class:`~lldd_core.forward.hooks.Hook`
    values; :func:`intervene` installs them); ``positions`` is shared by all interventions of a run."""

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        raise NotImplementedError


def _position_mask(h: torch.Tensor, positions: Positions, where: str) -> torch.Tensor:
    """``[B, t, 1]`` mask of the positions to modify (:data:`POSITIONS`)."""
    if where in ("last", "prompt"):
        mask = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        mask[:, -1] = where == "last" or positions.forwards == 1
    else:
        mask = positions.valid.to(h.device)
    return mask[..., None]


@dataclass
class AddVectors(Intervention):
    """``x_l <- x_l + w_l`` at block ``l``'s input for each ``l`` in ``vectors`` (``[d]`` each)."""

    vectors: dict[int, torch.Tensor]
    positions: str = "last"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        registrations = []
        for layer, w in self.vectors.items():
            def add(h: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
                mask = _position_mask(h, positions, self.positions)
                return h + mask.to(h.dtype) * w.to(h)

            registrations.append(replace_input(blocks[layer], add))
        return registrations


@dataclass
class AddRowVectors(Intervention):
    """``x_l <- x_l + W_l[b]`` at block ``l``'s input, a different vector for each batch row ``b``.

    ``vectors``: per layer ``[B, d]`` (a zero row leaves that row alone). Many additive settings, one row
    group each, then share one generation: row ``b`` gets exactly what :class:`AddVectors` with ``W_l[b]``
    would add to it alone.
    """

    vectors: dict[int, torch.Tensor]
    positions: str = "last"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        registrations = []
        for layer, W in self.vectors.items():
            def add(h: torch.Tensor, W: torch.Tensor = W) -> torch.Tensor:
                mask = _position_mask(h, positions, self.positions)
                return h + mask.to(h.dtype) * W.to(h)[:, None, :]

            registrations.append(replace_input(blocks[layer], add))
        return registrations


@dataclass
class LQRFeedback(Intervention):
    """``x_{k+1} <- f_k(x_k) + (β_k - v_k^T x_k) K_k v_k`` at the last position, every layer ``k``
    (``at="output"``), or ``x_k <- x_k + (β_k - v_k^T x_k) K_k v_k`` before block ``k`` runs (``at="input"``).

    ``directions``: ``[L, d]`` unit ``v_k``; ``beta``: ``[L]`` setpoints; ``gain_dirs``: ``[L, d]``
    the products ``K_k v_k``. Layers whose ``K_k v_k`` is zero are skipped.
    """

    directions: torch.Tensor
    beta: torch.Tensor
    gain_dirs: torch.Tensor
    at: str = "output"

    def __post_init__(self) -> None:
        if self.at not in LQR_AT:
            raise ValueError(f"at must be one of {LQR_AT}, got {self.at!r}")

    def _correct(self, k: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``h`` with ``(β_k - v_k^T x) K_k v_k`` added at the last position (``x``: block ``k``'s input there)."""
        v, Kv = self.directions[k].to(h), self.gain_dirs[k].to(h)
        u = (self.beta[k].to(h) - x.to(h) @ v)[:, None] * Kv  # [B, d]
        h = h.clone()
        h[:, -1] = h[:, -1] + u
        return h

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        registrations = []
        state: dict[int, torch.Tensor] = {}
        for k in range(self.directions.shape[0]):
            if not bool(self.gain_dirs[k].abs().max() > 0):
                continue
            if self.at == "input":
                registrations.append(replace_input(blocks[k], lambda x, k=k: self._correct(k, x, x[:, -1])))
                continue

            def feedback(h: torch.Tensor, k: int = k) -> torch.Tensor:
                return self._correct(k, h, state.pop(k))  # block k's input at the last position, stored by the pre-hook

            registrations.append(capture(blocks[k], state, k, at="input", select=lambda x: x[:, -1].detach()))
            registrations.append(replace_output(blocks[k], feedback))
        return registrations


JACOBIAN_VARIANTS = ("blend", "additive", "reference")


@dataclass
class JacobianSteering(Intervention):
    """The detached-Jacobian steering operator of a steering phrase (module doc, one of three variants).

    ``J``: ``[T_s, d, d]`` with ``J[i] = ∂x_layer(last token)/∂x_{0,i}`` of the phrase (detached
    model; with the final norm applied for ``reference``); ``layer`` in ``1..L``; ``b`` ``[d]`` the
    phrase's bias channel (added to ``a_k`` by ``blend`` and ``additive``; ``None``: zero).
    """

    J: torch.Tensor
    layer: int
    lam: float
    variant: str = "blend"
    b: torch.Tensor | None = None
    running: torch.Tensor | None = None  # [B, d] Σ_j J_{j mod T_s} x_{0,j} over the positions seen so far

    def __post_init__(self) -> None:
        if self.variant not in JACOBIAN_VARIANTS:
            raise ValueError(f"variant must be one of {JACOBIAN_VARIANTS}, got {self.variant!r}")

    def _update(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.variant == "blend":
            return self.lam * h + (1.0 - self.lam) * a
        scale = h.norm(dim=-1, keepdim=True) / (2 * a.norm(dim=-1, keepdim=True).clamp_min(1e-30))
        return h + self.lam * a * scale

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        added: dict[str, torch.Tensor] = {}
        T_s = self.J.shape[0]

        def accumulate(x0: torch.Tensor) -> None:  # x0: [B, t, d]
            pos = positions.current.to(x0.device)
            every = torch.einsum("sod,btd->btso", self.J.to(x0), x0)  # each phrase token's J_s x_0 (no [B,t,d,d] gather)
            index = (pos.clamp_min(0) % T_s)[..., None, None].expand(-1, -1, 1, x0.shape[-1])
            terms = every.gather(2, index)[:, :, 0]
            terms = terms * positions.valid.to(x0.device)[..., None].to(x0.dtype)
            start = self.running if self.running is not None else torch.zeros_like(x0[:, 0])
            cum = start[:, None] + terms.cumsum(dim=1)
            self.running = cum[:, -1]
            if self.b is not None and self.variant != "reference":
                cum = cum + self.b.to(cum)
            added["a"] = cum

        def steer(h: torch.Tensor) -> torch.Tensor:
            a = added.pop("a").to(h)
            valid = positions.valid.to(h.device)[..., None]
            return torch.where(valid, self._update(h, a), h)

        site = blocks[self.layer - 1]
        # reference: the input of block layer - 1 (after `accumulate` when that is block 0); else its output
        steering = replace_input(site, steer) if self.variant == "reference" else replace_output(site, steer)
        return [on_input(blocks[0], accumulate), steering]


@contextlib.contextmanager
def intervene(
    model: nn.Module,
    adapter: FamilyAdapter,
    interventions: Sequence[Intervention],
    *,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[Positions]:
    """Apply ``interventions`` to every forward inside the block; hooks are always removed.

    ``attention_mask``: the (left-padded) prompt batch's mask, so positions count real tokens
    only. One ``with`` block is one generation: the first forward is the prompt, later ones continue
    its positions (KV cache).
    """
    blocks = adapter.layers(model)
    pad = None
    if attention_mask is not None:
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("steering needs left padding (the last column must be real tokens)")
        pad = (attention_mask == 0).sum(dim=1)
    positions = Positions(pad=pad)

    def track(h: torch.Tensor) -> None:
        positions.start_forward(h.shape[1], h.device)

    registrations = [on_input(blocks[0], track)]  # first: the others read positions
    for item in interventions:
        registrations.extend(item.hooks(blocks, positions))
    with hooks(*registrations):
        yield positions
