"""Nonlinear recurrences ``h_t = f(h_{t-1}, x_t)`` solved in parallel over time by Newton's
method (ParaRNN, Danieli et al., 2025; DEER, Lim et al., 2024), and the step-by-step loop.

The T steps are one system of equations ``h_t − f(h_{t-1}, x_t) = 0`` in the unknowns
``h_0 … h_{T-1}`` (``h_{-1}`` given), from the guess ``h^0 = 0`` (closer than
``h^0_t = h_{-1}`` for a decaying LSTM cell in our tests). Newton's iteration linearises it
at the current guess ``h^k`` and solves the linear system, itself a first-order linear
recurrence::

    δ_t = J_t δ_{t-1} + (f(h^k_{t-1}) − h^k_t),   δ_{-1} = 0,   h^{k+1} = h^k + δ,
    J_t = ∂f/∂h_{t-1} at (h^k_{t-1}, x_t)

(the same as ``h^{k+1}_t = J_t h^{k+1}_{t-1} + f(h^k_{t-1}) − J_t h^k_{t-1}``). With a
structured Jacobian the linear recurrence is a parallel scan: element-wise for a diagonal
``J`` (``seqlab.ops.scan.diagonal_scan``), 2×2 blocks per channel for an LSTM's ``(c, h)``
(``seqlab.ops.block_scan.block2_scan``). Iteration k makes the first k steps exact, so T
iterations always reach the solution; a contracting cell reaches it in a few.

Backward (the adjoint; no graph through the iterations): with ``h*`` the detached solution,
``out = f(h*_{t-1}, x_t)`` is evaluated once with autograd, and the gradient ``g`` arriving
at ``out`` is replaced by ``λ``, the solution of the reverse linear recurrence
``λ_t = g_t + J_{t+1}^T λ_{t+1}`` (``λ_{T-1} = g_{T-1}``), the same scan run backward in
time. Autograd then carries ``λ_t`` through ``f`` to the inputs, the parameters and
``h_{-1}``: exactly the gradients of the sequential loop at its solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from seqlab.ops.block_scan import block2_adjoint, block2_scan
from seqlab.ops.float32 import float32_kernel
from seqlab.ops.scan import diagonal_scan

Structure = Literal["diagonal", "block2"]
# cell(h_prev [B, T, *S], inputs (each [B, T, ...]), jacobian) -> (h [B, T, *S], J or None):
# J is [B, T, *S] for a diagonal Jacobian, [B, T, N, 2, 2] for 2×2 blocks (S = [N, 2]).
Cell = Callable[[Tensor, tuple[Tensor, ...], bool], tuple[Tensor, Tensor | None]]
STRUCTURES = ("diagonal", "block2")


@dataclass(frozen=True)
class NewtonInfo:
    """How a solve went: `iterations` linear solves were run, `residual` is
    ``max |f(h_{t-1}, x_t) − h_t|`` at the returned solution, `converged` is
    ``residual <= tol`` (or the iterations reached T, where Newton is exact)."""

    iterations: int
    residual: float
    converged: bool
    tol: float


def default_tol(dtype: torch.dtype) -> float:
    """Absolute residual tolerance: 1e-12 in float64, 1e-5 in lower precisions."""
    return 1e-12 if dtype == torch.float64 else 1e-5


@float32_kernel
def newton_recurrence(
    cell: Cell,
    inputs: tuple[Tensor, ...],
    initial_state: Tensor,
    *,
    structure: Structure = "diagonal",
    max_iter: int = 10,
    tol: float | None = None,
    chunk_size: int = 64,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, NewtonInfo]:
    """Solve ``h_t = cell(h_{t-1}, x_t)`` for all t by Newton's method (see the module doc).

    Args:
        cell: the step, batched over time: ``cell(h_prev, inputs, jacobian)`` with
            ``h_prev [B, T, *S]`` (``h_prev[:, t] = h_{t-1}``) returns ``h [B, T, *S]`` and,
            when ``jacobian``, ``J_t = ∂h_t/∂h_{t-1}`` in the structured form.
        inputs: the per-step inputs, each ``[B, T, ...]`` (e.g. the projected gates).
        initial_state: ``h_{-1}`` of shape ``[B, *S]``; it may require grad.
        structure: ``"diagonal"`` (``J [B, T, *S]``) or ``"block2"`` (``S = [N, 2]``,
            ``J [B, T, N, 2, 2]``).
        max_iter: at most this many Newton iterations (linear solves); min(max_iter, T) run.
        tol: stop once ``max |f(h^k_{t-1}) − h^k_t| <= tol``; None: `default_tol` of the dtype.
        chunk_size: the parallel scans' chunk.
        project: maps each iterate ``[B, T, *S]`` to the nearest point of a box known to hold
            the solution (e.g. ``|h| <= 1`` for a tanh-bounded state). Clamping to such a box
            moves every component closer to the solution and keeps the first k steps exact,
            and it keeps an overshooting linear solve (Jacobian products with spectral
            radius > 1) from throwing the next linearisation far off: on a trained LSTM that
            needed 11 iterations without it, 5 with it.

    Returns:
        ``(h, info)``: ``h [B, T, *S]`` (``f`` at the solution, differentiable by the adjoint)
        and a `NewtonInfo`. Non-convergence is not an error here: the caller reads ``info``.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    tol = default_tol(initial_state.dtype) if tol is None else tol
    steps = inputs[0].shape[1]
    h0 = initial_state.detach()
    h = h0.new_zeros(h0.shape[0], steps, *h0.shape[1:])
    iterations = 0
    with torch.no_grad():
        fx, jac = cell(_shift(h, h0), inputs, True)
        for iterations in range(1, min(max_iter, steps) + 1):
            h = h + _linear_solve(structure, jac, fx - h, chunk_size)
            if project is not None:
                h = project(h)
            if iterations == min(max_iter, steps):
                break
            fx, jac = cell(_shift(h, h0), inputs, True)
            if (fx - h).abs().max().item() <= tol:
                break
    out, jac = cell(_shift(h, initial_state), inputs, torch.is_grad_enabled())
    residual = (out.detach() - h).abs().max().item()
    info = NewtonInfo(iterations, residual, residual <= tol or iterations >= steps, tol)
    if out.requires_grad:
        jac = jac.detach()
        out.register_hook(lambda grad: _adjoint(structure, jac, grad, chunk_size))
    return out, info


def sequential_recurrence(cell: Cell, inputs: tuple[Tensor, ...], initial_state: Tensor) -> Tensor:
    """Reference: ``h_t = cell(h_{t-1}, x_t)`` one step at a time (autograd through the loop).
    Shapes as in `newton_recurrence`; returns ``h [B, T, *S]``."""
    h, out = initial_state, []
    for t in range(inputs[0].shape[1]):
        h = cell(h.unsqueeze(1), tuple(x[:, t : t + 1] for x in inputs), False)[0].squeeze(1)
        out.append(h)
    return torch.stack(out, dim=1)


def _shift(h: Tensor, h0: Tensor) -> Tensor:
    """``[h_{-1}, h_0, …, h_{T-2}]``: the previous state of every step."""
    return torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)


def _linear_solve(structure: Structure, jac: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """``δ_t = J_t δ_{t-1} + b_t`` from ``δ_{-1} = 0``."""
    if structure == "diagonal":
        return diagonal_scan(jac, b, chunk_size=chunk_size)[0]
    return block2_scan(jac, b, chunk_size=chunk_size)


def _adjoint(structure: Structure, jac: Tensor, grad: Tensor, chunk_size: int) -> Tensor:
    """``λ_t = g_t + J_{t+1}^T λ_{t+1}``, the scan backward in time."""
    if structure == "block2":
        return block2_adjoint(jac, grad, chunk_size)
    jac_next = torch.cat([jac[:, 1:], torch.zeros_like(jac[:, :1])], dim=1)
    return diagonal_scan(jac_next.flip(1), grad.flip(1), chunk_size=chunk_size)[0].flip(1)
