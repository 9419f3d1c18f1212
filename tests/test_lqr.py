"""LQR over depth: the Riccati gains solve the finite-horizon problem (checked as one least-squares problem)."""

from __future__ import annotations

import pytest
import torch

from lldd_core.linalg.lqr import class_mean_setpoints, closed_loop, riccati_gains, setpoints


def _direct_solution(A, q, r, qf, z0, B=None):
    """Minimize Σ q|z_k|² + r|u_k|² + qf|z_L|² over u_0..u_{L-1} as one weighted least-squares problem.

    z_k = Φ_k z0 + Σ_{j<k} Φ_{k,j+1} B_j u_j is linear in u; the cost is a sum of squares of
    sqrt(weight) * (affine in u), so the optimum is a linear least-squares solution.
    """
    L, d = len(A), A[0].shape[0]
    n = L * d
    rows, rhs = [], []
    # z_k = M_k u + c_k
    M = torch.zeros(d, n, dtype=torch.float64)
    c = z0.clone()
    for k in range(L + 1):
        w = qf if k == L else q
        if w > 0:
            rows.append(w ** 0.5 * M)
            rhs.append(-(w ** 0.5) * c)
        if k == L:
            break
        M = A[k] @ M
        M[:, k * d:(k + 1) * d] += torch.eye(d, dtype=torch.float64) if B is None else B[k]
        c = A[k] @ c
    rows.append(r ** 0.5 * torch.eye(n, dtype=torch.float64))
    rhs.append(torch.zeros(n, dtype=torch.float64))
    u = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)).solution
    return u.reshape(L, d)


@pytest.mark.parametrize("q,r,qf", [(0.1, 3.0, 0.1), (0.1, 10.0, 10.0), (10.0, 10.0, 1.0), (0.0, 1.0, 5.0)])
def test_riccati_gains_equal_the_direct_least_squares_solution(q, r, qf):
    gen = torch.Generator().manual_seed(0)
    L, d = 5, 6
    A = [torch.randn(d, d, generator=gen, dtype=torch.float64) / d ** 0.5 * 1.3 for _ in range(L)]
    K = riccati_gains(A, q, r, qf)
    assert K.shape == (L, d, d)
    for _ in range(3):
        z0 = torch.randn(d, generator=gen, dtype=torch.float64)
        _, u_loop = closed_loop(A, K, z0)
        u_direct = _direct_solution(A, q, r, qf, z0)
        torch.testing.assert_close(u_loop, u_direct, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("q,r,qf", [(0.1, 3.0, 0.1), (10.0, 1.0, 1.0), (0.0, 1.0, 5.0)])
def test_riccati_gains_with_control_matrices_equal_the_direct_solution(q, r, qf):
    """``B_k = A_k`` (the control corrects block k's input) at some layers, ``B_k = 0`` (no control) at the others."""
    gen = torch.Generator().manual_seed(1)
    L, d = 5, 6
    A = [torch.randn(d, d, generator=gen, dtype=torch.float64) / d ** 0.5 * 1.3 for _ in range(L)]
    B = [A[k] if k in (1, 2) else torch.zeros(d, d, dtype=torch.float64) for k in range(L)]
    K = riccati_gains(A, q, r, qf, B=B)
    assert float(K[[0, 3, 4]].abs().max()) == 0.0  # no control where B_k = 0
    for _ in range(3):
        z0 = torch.randn(d, generator=gen, dtype=torch.float64)
        _, u_loop = closed_loop(A, K, z0, B)
        torch.testing.assert_close(u_loop, _direct_solution(A, q, r, qf, z0, B), rtol=1e-8, atol=1e-10)
    identity = [torch.eye(d, dtype=torch.float64)] * L
    torch.testing.assert_close(riccati_gains(A, q, r, qf, B=identity), riccati_gains(A, q, r, qf), rtol=1e-12, atol=1e-13)


def test_zero_state_weights_give_zero_gains_and_bad_weights_are_refused():
    A = [torch.eye(3, dtype=torch.float64)] * 4
    assert float(riccati_gains(A, 0.0, 1.0, 0.0).abs().max()) == 0.0
    with pytest.raises(ValueError, match="positive"):
        riccati_gains(A, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        riccati_gains(A, -1.0, 1.0, 1.0)


def test_scalar_case_matches_the_closed_form():
    # one step, scalar: minimize r u² + qf (a z + u)² -> u = -qf a z / (r + qf)
    a, r, qf = 1.7, 2.0, 5.0
    K = riccati_gains([torch.tensor([[a]], dtype=torch.float64)], 0.0, r, qf)
    assert float(K[0, 0, 0]) == pytest.approx(qf * a / (r + qf), rel=1e-14)


def test_setpoints_scale_the_class_mean_difference():
    E = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    v, beta = setpoints(E, 1.5)
    torch.testing.assert_close(v, torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(beta, torch.tensor([7.5, 3.0], dtype=torch.float64))


def test_class_mean_setpoints_run_from_the_boundary_to_the_target_class_mean():
    mu1 = torch.tensor([[3.0, 5.0], [1.0, 2.0]], dtype=torch.float64)
    mu0 = torch.tensor([[0.0, 1.0], [1.0, -2.0]], dtype=torch.float64)
    means = torch.stack([mu1, mu0])
    v, beta1 = class_mean_setpoints(means, 1.0)
    torch.testing.assert_close(v, torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(beta1, (v * mu1).sum(-1), rtol=1e-15, atol=1e-15)  # λ = 1: v·μ_1
    _, beta0 = class_mean_setpoints(means, 0.0)
    torch.testing.assert_close(beta0, (v * (mu0 + mu1) / 2).sum(-1), rtol=1e-15, atol=1e-15)  # λ = 0: the boundary
    _, beta_neg = class_mean_setpoints(means, -1.0)
    torch.testing.assert_close(beta_neg, (v * mu0).sum(-1), rtol=1e-15, atol=1e-14)  # λ = -1: the other class
