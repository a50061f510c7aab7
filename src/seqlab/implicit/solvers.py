"""Fixed-point solvers for z = f(z): plain iteration, Anderson acceleration, limited-memory
Broyden.

Every solver has the signature `solve(f, z0, *, max_iter, tol, ...) -> (z, SolverInfo)` with
`f` a map `[B, ...] -> [B, ...]` (one DEQ layer with its input bound) and `z0` its starting
point. The batch is solved together, but every sample has its own residual

    r_b(z) = ‖f(z)_b − z_b‖ / ‖f(z)_b‖        (norms over all of sample b's other axes, e.g. T·D)

and its own history (Anderson's mixing weights, Broyden's inverse Jacobian), so one hard
sample does not change what another converges to. A solve has converged when every sample's
residual is at most `tol`; `iterations` counts the evaluations of `f` it made, and the
returned `z` is, per sample, the iterate with the lowest residual seen (so `f` is never
evaluated at a point the solver has not measured). Solvers run under whatever autograd mode
the caller chose; the DEQ calls them under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Map = Callable[[Tensor], Tensor]


@dataclass
class SolverInfo:
    """What a solve did: `iterations` evaluations of f, the final per-sample relative residual
    `residual` `[B]` of the returned z, and whether every sample reached `tol`."""

    iterations: int
    residual: Tensor
    converged: bool

    @property
    def max_residual(self) -> float:
        return float(self.residual.max()) if self.residual.numel() else 0.0


def relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """‖f(z) − z‖ / ‖f(z)‖ per sample `[B]` (a tiny floor keeps f(z) = 0 finite)."""
    diff = (fz - z).flatten(1).norm(dim=1)
    scale = fz.flatten(1).norm(dim=1).clamp_min(torch.finfo(fz.dtype).tiny)
    return diff / scale


class _Best:
    """The lowest-residual iterate of each sample seen so far."""

    def __init__(self, z: Tensor, residual: Tensor) -> None:
        self.z, self.residual = z, residual.detach()

    def update(self, z: Tensor, residual: Tensor) -> None:
        better = residual < self.residual
        shape = (-1,) + (1,) * (z.dim() - 1)
        self.z = torch.where(better.view(shape), z, self.z)
        self.residual = torch.minimum(residual.detach(), self.residual)

    def done(self, tol: float) -> bool:
        return bool((self.residual <= tol).all())

    def info(self, iterations: int, tol: float) -> tuple[Tensor, SolverInfo]:
        return self.z, SolverInfo(iterations, self.residual, self.done(tol))


def fixed_point(f: Map, z0: Tensor, *, max_iter: int, tol: float) -> tuple[Tensor, SolverInfo]:
    """Plain (Picard) iteration z_{k+1} = f(z_k); converges linearly at the rate of f's
    Lipschitz constant when f is a contraction."""
    z = z0
    fz = f(z)
    best = _Best(z, relative_residual(fz, z))
    iterations = 1
    while iterations < max_iter and not best.done(tol):
        z = fz
        fz = f(z)
        iterations += 1
        best.update(z, relative_residual(fz, z))
    return best.info(iterations, tol)


def anderson(
    f: Map,
    z0: Tensor,
    *,
    max_iter: int,
    tol: float,
    memory: int = 5,
    regularization: float = 1e-4,
    mixing: float = 1.0,
) -> tuple[Tensor, SolverInfo]:
    """Anderson acceleration (type II, windowed): with the last m = `memory` iterates z_i and
    their images f_i, residuals g_i = f_i − z_i stacked as the rows of G `[m, n]`,

        α = argmin ‖αᵀ G‖² + λ s ‖α‖²  subject to  Σ α_i = 1    (λ = `regularization`)
        z_{k+1} = β Σ α_i f_i + (1 − β) Σ α_i z_i                (β = `mixing`)

    α solves the bordered system [[0, 1ᵀ], [1, GGᵀ + λsI]] [ν; α] = [1; 0] (one small linear
    solve per sample). The ridge λs, with s = trace(GGᵀ)/n the mean squared residual of the
    window, keeps GGᵀ invertible when residuals are nearly parallel and is relative, so it
    neither dominates once the residuals are small nor vanishes beside large ones. With m = 1
    it reduces to (damped) fixed-point iteration.
    """
    batch = z0.shape[0]
    flat = z0.reshape(batch, -1)
    m = max(1, min(memory, max_iter))
    zs = flat.new_zeros(batch, m, flat.shape[1])
    fs = flat.new_zeros(batch, m, flat.shape[1])
    fz = f(z0).reshape(batch, -1)
    zs[:, 0], fs[:, 0] = flat, fz
    best = _Best(z0, relative_residual(fz, flat))
    iterations = 1
    while iterations < max_iter and not best.done(tol):
        n = min(iterations, m)
        g = fs[:, :n] - zs[:, :n]
        system = flat.new_zeros(batch, n + 1, n + 1)
        system[:, 0, 1:] = 1
        system[:, 1:, 0] = 1
        eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
        gram = g @ g.transpose(1, 2)
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)
        system[:, 1:, 1:] = gram + (regularization * scale)[:, None, None] * eye
        rhs = flat.new_zeros(batch, n + 1, 1)
        rhs[:, 0] = 1
        alpha = torch.linalg.solve(system, rhs)[:, 1:, 0]  # [B, n]
        mixed_f = torch.einsum("bi,bin->bn", alpha, fs[:, :n])
        mixed_z = torch.einsum("bi,bin->bn", alpha, zs[:, :n])
        z = mixing * mixed_f + (1 - mixing) * mixed_z
        fz = f(z.view_as(z0)).reshape(batch, -1)
        slot = iterations % m
        zs[:, slot], fs[:, slot] = z, fz
        iterations += 1
        best.update(z.view_as(z0), relative_residual(fz, z))
    return best.info(iterations, tol)


def broyden(
    f: Map, z0: Tensor, *, max_iter: int, tol: float, memory: int = 5
) -> tuple[Tensor, SolverInfo]:
    """Limited-memory ("good") Broyden's method on g(z) = f(z) − z = 0, as the DEQ papers use.

    The inverse Jacobian of g is approximated by H = −I + Σ_i u_i v_iᵀ (−I is exact for a
    constant f), and each step is

        Δz = −H g(z_k),  z_{k+1} = z_k + Δz,  Δg = g(z_{k+1}) − g(z_k)
        H ← H + (Δz − H Δg) (Δzᵀ H) / (Δzᵀ H Δg)          (Sherman–Morrison rank one)

    keeping at most m = `memory` pairs (u, v): when all m are used, H restarts from −I (a
    restart keeps H the exact product of its updates, where dropping only the oldest pair
    would leave later pairs built on a matrix that no longer exists). A step whose
    denominator vanishes adds no pair for that sample. Full steps (no line search).
    """
    batch = z0.shape[0]
    z = z0.reshape(batch, -1)
    m = max(1, min(memory, max_iter))
    us = z.new_zeros(batch, m, z.shape[1])
    vs = z.new_zeros(batch, m, z.shape[1])

    def apply(x: Tensor) -> Tensor:  # H x
        return -x + torch.einsum("bin,bi->bn", us, torch.einsum("bin,bn->bi", vs, x))

    def apply_transposed(x: Tensor) -> Tensor:  # Hᵀ x
        return -x + torch.einsum("bin,bi->bn", vs, torch.einsum("bin,bn->bi", us, x))

    fz = f(z0).reshape(batch, -1)
    g = fz - z
    best = _Best(z0, relative_residual(fz, z))
    iterations = 1
    while iterations < max_iter and not best.done(tol):
        dz = -apply(g)
        z = z + dz
        fz = f(z.view_as(z0)).reshape(batch, -1)
        g_new = fz - z
        iterations += 1
        best.update(z.view_as(z0), relative_residual(fz, z))
        dg = g_new - g
        g = g_new
        slot = (iterations - 2) % m
        if slot == 0:
            us.zero_()
            vs.zero_()
        h_dg = apply(dg)
        denominator = (dz * h_dg).sum(dim=1, keepdim=True)
        usable = denominator.abs() > torch.finfo(z.dtype).eps
        us[:, slot] = torch.where(usable, (dz - h_dg) / torch.where(usable, denominator, 1), 0)
        vs[:, slot] = apply_transposed(dz) * usable
    return best.info(iterations, tol)


SOLVERS: dict[str, Callable[..., tuple[Tensor, SolverInfo]]] = {
    "fixed_point": fixed_point,
    "anderson": anderson,
    "broyden": broyden,
}


def solve(
    name: str, f: Map, z0: Tensor, *, max_iter: int, tol: float, memory: int
) -> tuple[Tensor, SolverInfo]:
    """Run solver `name` (a key of `SOLVERS`); `memory` is Anderson's window and Broyden's
    rank (fixed-point iteration keeps none)."""
    if name == "fixed_point":
        return fixed_point(f, z0, max_iter=max_iter, tol=tol)
    return SOLVERS[name](f, z0, max_iter=max_iter, tol=tol, memory=memory)
