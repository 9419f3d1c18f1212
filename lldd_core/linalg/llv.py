"""The low-order linear layer-varying (LLV) surrogate of depth dynamics and its predicted gains.

Depth is time: the last token's state follows ``x_{l+1} = f_l(x_l)`` (:mod:`lldd_core.forward.depth`),
linearized as ``δx_{l+1} = A_l δx_l`` with ``A_l = ∂f_l/∂x_l``. An injection ``u v_k`` at layer
``k`` enters before ``f_k``. Each layer gets an orthonormal basis ``P_l`` ``[d, r]`` whose first
column is the concept direction ``v_l``; the reduced model is

    r_{l+1} = Ā_l r_l + B̄_l u_l,    Ā_l = P_{l+1}^T A_l P_l,    B̄_l = P_{l+1}^T A_l v_l = Ā_l e_1,

and the predicted gain of an injection at layer ``k`` on the readout ``v_L^T x_L`` (so ``c = e_1``:
``v_L`` is ``P_L``'s first column) is

    g_k = e_1^T Ā_{L-1} ... Ā_{k+1} B̄_k        (k = 0 .. L-1; the product is empty for k = L-1).

With ``r = d`` every basis is complete and ``g_k`` is the exact linear gain
``∂(v_L^T x_L)/∂x_k · v_k``.

Bases (the complement of ``v_l`` in ``P_l``):

* ``krylov`` (default): ``P_0`` spans ``v_0, M_0 v_0, M_0^2 v_0, ...`` (built by Arnoldi: never
  from the raw powers, which are ill-conditioned) and ``P_{l+1}`` spans
  ``v_{l+1}`` and ``M_l P_l`` (the previous basis carried one layer deeper), where ``M_l v`` is the
  mean Jacobian action over the operating prompts. The span then holds every earlier injection as
  propagated by the mean dynamics, which is what the gains need.
* ``random``: a seeded random complement (ablation).
* ``pca``: the top principal directions of the operating prompts' states at layer ``l`` (ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MeanAction = Callable[[int, torch.Tensor], torch.Tensor]  # (layer l, V [d, m]) -> mean_p A_l(p) V
COMPLEMENTS = ("krylov", "random", "pca")


def _drop_tol(dtype: torch.dtype) -> float:
    """Relative remainder below which a new direction is rounding, not span (``1e-8``, or 64 ulp in float32)."""
    return max(1e-8, 64 * torch.finfo(dtype).eps)


def _orthogonal_remainder(Q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``c`` minus its projection on the orthonormal columns of ``Q`` (classical Gram-Schmidt, twice)."""
    x = c - Q @ (Q.T @ c)
    return x - Q @ (Q.T @ x)


def _orthonormal_with_first(first: torch.Tensor, candidates: torch.Tensor, r: int) -> torch.Tensor:
    """``[d, r]``: ``first`` (unit) then the candidates' directions orthogonal to what came before.

    Columns are taken in order (greedy Gram-Schmidt, twice) and dropped when their remainder is
    below :func:`_drop_tol` of their norm; if fewer than ``r`` survive, the basis is completed from
    the standard basis vectors in the same way (so the result always has ``r`` columns when ``r <= d``).
    """
    d = first.shape[0]
    if not 1 <= r <= d:
        raise ValueError(f"order r={r} must lie in 1..{d}")
    cols = [first / first.norm()]
    eye = torch.eye(d, dtype=first.dtype, device=first.device)
    tol = _drop_tol(first.dtype)
    for pool in (candidates.T, eye):
        for c in pool:
            if len(cols) == r:
                break
            x = _orthogonal_remainder(torch.stack(cols, dim=1), c)
            n = x.norm()
            if n > tol * max(float(c.norm()), 1e-300):
                cols.append(x / n)
    return torch.stack(cols, dim=1)


def arnoldi(first: torch.Tensor, action: Callable[[torch.Tensor], torch.Tensor], r: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal basis ``Q`` ``[d, r]`` of the Krylov space ``span{v, Mv, ..., M^{r-1} v}``, ``v`` first.

    Arnoldi's scheme: each new vector is ``M q_j`` of the last *orthonormal* column, orthogonalized
    (twice) before the next product, so no column is ever a raw power ``M^j v`` (whose condition
    number grows like ``(σ_1/σ_r)^j`` and loses the span in float32). ``action(V [d, m]) -> M V``.
    On breakdown (``M q_j`` in the span already: the space is invariant) the basis is completed from
    the standard basis vectors. Returns ``Q`` and ``MQ`` ``[d, m]``, the products of its first ``m``
    columns that the iteration computed (``m = r - 1`` without breakdown), for callers to reuse.
    """
    d = first.shape[0]
    if not 1 <= r <= d:
        raise ValueError(f"order r={r} must lie in 1..{d}")
    tol = _drop_tol(first.dtype)
    cols = [first / first.norm()]
    products: list[torch.Tensor] = []
    while len(cols) < r:
        w = action(cols[-1][:, None])[:, 0]
        products.append(w)
        x = _orthogonal_remainder(torch.stack(cols, dim=1), w)
        n = x.norm()
        if not n > tol * max(float(w.norm()), 1e-300):
            break  # invariant subspace: complete it below
        cols.append(x / n)
    Q = torch.stack(cols, dim=1)
    if Q.shape[1] < r:
        Q = _orthonormal_with_first(first, Q[:, 1:], r)
    MQ = torch.stack(products[: Q.shape[1]], dim=1) if products else Q[:, :0]
    return Q, MQ


def krylov_bases(directions: torch.Tensor, mean_action: MeanAction, r: int,
                 actions: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``P_0 .. P_L`` (each ``[d, r]``) by the depth-Krylov rule of the module doc.

    ``directions``: ``[L + 1, d]`` unit ``v_l``. ``P_0`` comes from :func:`arnoldi` on ``M_0``
    (``r - 1`` sequential products whose results are reused for ``M_0 P_0``); each later
    ``P_{l+1}`` from one batched action ``M_l P_l`` of an orthonormal basis. Given a list
    ``actions``, the full ``M_l P_l`` (all ``r`` columns) is appended to it for each layer, so a
    caller whose operating set is a single prompt gets the reduced model without applying the
    Jacobians again.
    """
    L = directions.shape[0] - 1
    width = r if actions is not None else max(r - 1, 1)
    P0, known = arnoldi(directions[0], lambda V: mean_action(0, V), r)
    bases: list[torch.Tensor] = [P0]
    for layer in range(L):
        P = bases[-1][:, :width]
        if layer == 0 and known.shape[1] > 0:
            m = min(known.shape[1], width)
            rest = mean_action(0, P[:, m:]) if m < width else P[:, :0]
            carried = torch.cat([known[:, :m], rest], dim=1)
        else:
            carried = mean_action(layer, P)  # M_l P_l, the previous basis one layer on
        if actions is not None:
            actions.append(carried)
        bases.append(next_basis(directions[layer + 1], carried, r))
    return bases


def next_basis(direction: torch.Tensor, carried: torch.Tensor, r: int) -> torch.Tensor:
    """``P_{l+1}`` ``[d, r]``: ``v_{l+1}`` first, then the directions of the carried basis ``M_l P_l`` (its
    first ``r - 1`` columns, in order) orthogonal to what came before (the depth-Krylov rule)."""
    return _orthonormal_with_first(direction, carried[:, : max(r - 1, 1)], r)


def random_bases(directions: torch.Tensor, r: int, seed: int = 0) -> list[torch.Tensor]:
    """``P_l = [v_l, random orthonormal complement]`` (seeded), for the ablation."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = directions.shape[1]
    return [
        _orthonormal_with_first(v, torch.randn(d, r, generator=gen, dtype=torch.float64).to(v), r) for v in directions
    ]


def pca_bases(directions: torch.Tensor, states: torch.Tensor, r: int) -> list[torch.Tensor]:
    """``P_l = [v_l, top principal directions of the states at layer l]`` (``states``: ``[N, L + 1, d]``)."""
    bases = []
    for layer, v in enumerate(directions):
        X = states[:, layer].to(v) - states[:, layer].to(v).mean(0)
        _, _, Vh = torch.linalg.svd(X, full_matrices=False)
        bases.append(_orthonormal_with_first(v, Vh[: r].T, r))
    return bases


def reduced_model(bases: Sequence[torch.Tensor], actions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``Ā_l = P_{l+1}^T (A_l P_l)`` for ``l = 0..L-1``, from the actions ``A_l P_l`` (``[d, r]`` each)."""
    return [bases[layer + 1].T @ actions[layer] for layer in range(len(actions))]


def predicted_gains(Abar: Sequence[torch.Tensor]) -> torch.Tensor:
    """``g_k = e_1^T Ā_{L-1} ... Ā_{k+1} Ā_k e_1`` for ``k = 0..L-1`` (``B̄_k = Ā_k e_1``), one backward sweep."""
    L = len(Abar)
    r = Abar[-1].shape[0]
    c = torch.zeros(r, dtype=Abar[-1].dtype, device=Abar[-1].device)
    c[0] = 1.0
    gains = torch.empty(L, dtype=c.dtype, device=c.device)
    for k in range(L - 1, -1, -1):
        gains[k] = c @ Abar[k][:, 0]
        c = Abar[k].T @ c  # c^T Ā_{L-1} ... Ā_k, ready for layer k - 1
    return gains
