"""The fixed-point solvers converge on contractive maps, per sample, and say when they do not."""

from __future__ import annotations

import pytest
import torch

from seqlab.implicit.solvers import SOLVERS, relative_residual, solve


def linear_map(rate: float, batch: int = 3, size: int = 6, seed: int = 0):
    """f(z) = A_b z + c_b per sample, A_b symmetric with spectral radius `rate`."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, size, size, generator=g, dtype=torch.float64))
    eigen = torch.linspace(-rate, rate, size, dtype=torch.float64)
    a = q @ torch.diag_embed(eigen.expand(batch, size)) @ q.transpose(1, 2)
    c = torch.randn(batch, size, 1, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(size, dtype=torch.float64) - a, c)
    return (lambda z: a @ z + c), exact


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_each_solver_converges_on_a_contractive_map(name):
    f, exact = linear_map(0.6)
    z0 = torch.zeros_like(exact)
    z, info = solve(name, f, z0, max_iter=200, tol=1e-10, memory=6)
    assert info.converged and info.max_residual <= 1e-10
    assert info.residual.shape == (3,)
    torch.testing.assert_close(z, exact, atol=1e-8, rtol=0)
    torch.testing.assert_close(info.residual, relative_residual(f(z), z))


def test_a_nonlinear_contraction_is_solved_too():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    w = 0.7 * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ w.T + x)

    for name in SOLVERS:
        z, info = solve(name, f, torch.zeros_like(x), max_iter=100, tol=1e-9, memory=5)
        assert info.converged, name
        torch.testing.assert_close(f(z), z, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_quasi_newton_solvers_beat_plain_iteration_on_a_slow_contraction(name):
    f, _ = linear_map(0.95)
    z0 = torch.zeros(3, 6, 1, dtype=torch.float64)
    _, plain = solve("fixed_point", f, z0, max_iter=2000, tol=1e-8, memory=1)
    _, fast = solve(name, f, z0, max_iter=2000, tol=1e-8, memory=8)
    assert plain.converged and fast.converged
    assert fast.iterations * 5 < plain.iterations


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_solve_that_runs_out_of_iterations_says_so(name):
    f, _ = linear_map(0.99)
    z, info = solve(
        name, f, torch.zeros(3, 6, 1, dtype=torch.float64), max_iter=3, tol=1e-12, memory=2
    )
    assert not info.converged and info.iterations == 3 and info.max_residual > 1e-12
    assert torch.isfinite(z).all()


def test_samples_are_solved_independently():
    """A sample's solution does not depend on the others it is batched with."""
    f, exact = linear_map(0.8)
    for name in SOLVERS:
        together, _ = solve(name, f, torch.zeros_like(exact), max_iter=300, tol=1e-11, memory=4)
        for b in range(exact.shape[0]):

            def alone_map(z, b=b):
                padded = torch.zeros_like(exact)
                padded[b] = z[0]
                return f(padded)[b : b + 1]

            alone, _ = solve(
                name,
                alone_map,
                torch.zeros_like(exact[b : b + 1]),
                max_iter=300,
                tol=1e-11,
                memory=4,
            )
            torch.testing.assert_close(together[b], alone[0], atol=1e-8, rtol=0)
            torch.testing.assert_close(together[b], exact[b], atol=1e-8, rtol=0)
