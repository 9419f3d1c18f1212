"""Singular value spectra of Jacobian blocks.

For each token's ``J_i`` (``d_out x d_in``) the singular values ``sigma_1 >= sigma_2 >= ...``,
and the stable rank ``||J_i||_F^2 / sigma_1^2``.
"""

from __future__ import annotations

import torch


def singular_values(J: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """All singular values of each ``J[i]`` (``J``: ``[T, d_out, d_in]``), descending, ``[T, min(d_out, d_in)]``.

    Half-precision Jacobians are promoted to float32 (LAPACK has no half SVD).
    """
    work = J if J.dtype in (torch.float32, torch.float64) else J.float()
    return torch.cat([torch.linalg.svdvals(work[i : i + chunk]) for i in range(0, work.shape[0], chunk)])


def stable_rank(sv: torch.Tensor) -> torch.Tensor:
    """``sum sigma^2 / sigma_1^2`` per row of ``sv`` (0 where ``sigma_1 = 0``)."""
    top = sv[..., 0] ** 2
    return torch.where(top > 0, (sv**2).sum(-1) / torch.where(top > 0, top, 1), torch.zeros_like(top))
