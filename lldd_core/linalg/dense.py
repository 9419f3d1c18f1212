"""A formed Jacobian ``J`` ``[T, d_out, d_in]`` behind the matrix-free operator interface.

The spectral routines take either a :class:`~lldd_core.forward.jacobian.JacobianOperator` (products
by autograd) or this (products by ``einsum``), so that formed matrices reuse the same Krylov code.
"""

from __future__ import annotations

import torch


class DenseOperator:
    """The operator interface of :class:`~lldd_core.forward.jacobian.JacobianOperator` over formed ``J`` ``[T, d_out, d_in]``."""

    def __init__(self, J: torch.Tensor) -> None:
        self.J = J
        self.y = torch.zeros(J.shape[1], dtype=J.dtype, device=J.device)  # dtype/device carrier only

    n_tokens = property(lambda self: self.J.shape[0])
    d_out = property(lambda self: self.J.shape[1])
    d_in = property(lambda self: self.J.shape[2])

    def rmatvec(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.einsum("tod,mo->mtd", self.J, u), torch.zeros(u.shape[0], dtype=self.J.dtype, device=self.J.device)

    def matvec(self, v: torch.Tensor, mode: str = "reverse") -> torch.Tensor:
        return torch.einsum("tod,mtd->mo", self.J, v)

    def per_token_rmatvec(self, Q: torch.Tensor) -> torch.Tensor:
        return self.J.mT @ Q

    def per_token_matvec(self, P: torch.Tensor) -> torch.Tensor:
        return self.J @ P
