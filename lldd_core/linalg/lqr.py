"""Finite-horizon LQR over depth (REFERENCES.md, section B).

Depth is time: ``x_{k+1} = f_k(x_k) + u_k`` (``B = I``: the control is added to block ``k``'s
output at the last token), linearized around the operating prompts as ``δx_{k+1} = A_k δx_k + u_k``
with ``A_k`` the last-token block Jacobian **averaged over prompts**. With ``Q = qI``,
``R = rI``, ``Q_f = q_f I`` the cost of a deviation ``z`` from the setpoint is

    J = Σ_{k=0}^{L-1} (z_k^T Q z_k + u_k^T R u_k) + z_L^T Q_f z_L,

and the backward Riccati recursion (``S_L = Q_f``)

    P_k = S_{k+1} + R,   F_k = S_{k+1} A_k,   K_k = P_k^{-1} F_k,
    S_k = Q + A_k^T S_{k+1} A_k - F_k^T P_k^{-1} F_k

gives the optimal feedback ``u_k = -K_k z_k``. Steering uses it with the error ``e_k = -z_k``
measured along the concept direction only: ``e_k = (β_k - v_k^T x_k) v_k`` with ``E_k`` the class-mean
difference at layer ``k`` and ``v_k = E_k / ||E_k||``, so ``u_k = K_k e_k = (β_k - v_k^T x_k) K_k v_k``.

The control may instead correct block ``k``'s *input* (``x_k <- x_k + u_k``, then ``x_{k+1} = f_k(x_k)``):
linearized, ``δx_{k+1} = A_k (δx_k + u_k)``, the same problem with ``B_k = A_k`` in

    P_k = B_k^T S_{k+1} B_k + R,   F_k = B_k^T S_{k+1} A_k,   K_k = P_k^{-1} F_k,
    S_k = Q + A_k^T S_{k+1} A_k - F_k^T K_k

(``B_k = I`` gives the recursion above). Setpoints (:func:`setpoints`, :func:`class_mean_setpoints`):
``β_k = λ ||E_k||`` (the reference's), or ``β_k = v_k^T (μ_1 + μ_0)/2 + λ ||E_k||/2``, which is the
target class's mean ``v_k^T μ_1`` at ``λ = 1`` and the decision boundary at ``λ = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def riccati_gains(A: Sequence[torch.Tensor] | torch.Tensor, q: float, r: float, qf: float,
                  B: Sequence[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
    """``K_0 .. K_{L-1}`` ``[L, d, d]`` of the finite-horizon problem in the module doc (float64 inside);
    ``B``: the control matrices ``B_k`` (``None``: ``I``, the control added to block ``k``'s output)."""
    A = [torch.as_tensor(a, dtype=torch.float64) for a in A]
    Bs = None if B is None else [torch.as_tensor(b, dtype=torch.float64) for b in B]
    if r <= 0:
        raise ValueError(f"the control weight r must be positive, got {r}")
    if q < 0 or qf < 0:
        raise ValueError(f"the state weights q and q_f must be non-negative, got q={q}, q_f={qf}")
    d = A[0].shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    S = qf * eye
    gains = [torch.empty(0)] * len(A)
    for k in range(len(A) - 1, -1, -1):
        if Bs is None:
            P, F = S + r * eye, S @ A[k]
        else:
            P, F = Bs[k].T @ S @ Bs[k] + r * eye, Bs[k].T @ S @ A[k]
        K = torch.linalg.solve(P, F)
        gains[k] = K
        S = q * eye + A[k].T @ S @ A[k] - F.T @ K
        S = 0.5 * (S + S.T)  # symmetric in exact arithmetic; keep it so
    return torch.stack(gains)


def closed_loop(A: Sequence[torch.Tensor], K: torch.Tensor, z0: torch.Tensor,
                B: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``z_0..z_L`` and controls ``u_k = -K_k z_k`` of the linear closed loop ``z_{k+1} = A_k z_k + B_k u_k``
    from ``z0`` (``B``: ``None`` for ``I``)."""
    z = [torch.as_tensor(z0, dtype=torch.float64)]
    u = []
    for k, a in enumerate(A):
        u.append(-K[k] @ z[-1])
        push = u[-1] if B is None else torch.as_tensor(B[k], dtype=torch.float64) @ u[-1]
        z.append(torch.as_tensor(a, dtype=torch.float64) @ z[-1] + push)
    return torch.stack(z), torch.stack(u)


def setpoints(class_means_diff: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v_k, β_k)`` from the class-mean differences ``E_k`` ``[L, d]``: ``v = E/||E||``, ``β = λ ||E||``."""
    norms = class_means_diff.norm(dim=-1)
    return class_means_diff / norms.clamp_min(1e-30)[:, None], lam * norms


def class_mean_setpoints(class_means: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v_k, β_k)`` from the class means ``[2, L, d]`` (``μ_1`` first): ``v = E/||E||`` with ``E = μ_1 - μ_0``
    and ``β = v^T (μ_1 + μ_0)/2 + λ ||E||/2`` (``λ = 1``: ``v^T μ_1``, the target class's mean along ``v``)."""
    v, norms = setpoints(class_means[0] - class_means[1], 1.0)
    middle = torch.einsum("kd,kd->k", v, (class_means[0] + class_means[1]) / 2)
    return v, middle + lam * norms / 2
