"""Newton's parallel solve of a nonlinear recurrence against the step-by-step loop."""

from __future__ import annotations

import pytest
import torch

from seqlab.ops.newton_recurrence import newton_recurrence, sequential_recurrence

F64 = torch.float64


def tanh_cell(w: torch.Tensor):
    """Diagonal: h_t = tanh(w ⊙ h_{t−1} + u_t), J = w (1 − h_t²)."""

    def cell(h_prev, inputs, jacobian):
        h = torch.tanh(w * h_prev + inputs[0])
        return h, (w * (1 - h * h) if jacobian else None)

    return cell


def mixing_cell(w: torch.Tensor):
    """2×2 blocks: s_t = tanh(W s_{t−1} + u_t) per channel, J = diag(1 − s_t²) W."""

    def cell(s_prev, inputs, jacobian):
        s = torch.tanh((w * s_prev.unsqueeze(-2)).sum(-1) + inputs[0])
        return s, ((1 - s * s).unsqueeze(-1) * w if jacobian else None)

    return cell


CASES = {
    "diagonal": (tanh_cell, (5,), (5,)),
    "block2": (mixing_cell, (4, 2, 2), (4, 2)),
}


def _setup(structure, steps, with_state, seed=0):
    make, w_shape, s_shape = CASES[structure]
    gen = torch.Generator().manual_seed(seed)
    w = (0.5 * torch.randn(w_shape, generator=gen, dtype=F64)).requires_grad_()
    u = torch.randn(2, steps, *s_shape, generator=gen, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, *s_shape, generator=gen, dtype=F64) if with_state else None
    h0 = (torch.zeros(2, *s_shape, dtype=F64) if h0 is None else h0).requires_grad_()
    return make(w), w, u, h0


@pytest.mark.parametrize("structure", ["diagonal", "block2"])
@pytest.mark.parametrize("steps", [1, 13, 37])
@pytest.mark.parametrize("with_state", [False, True])
def test_newton_matches_sequential_forward_and_gradients_float64(structure, steps, with_state):
    cell, w, u, h0 = _setup(structure, steps, with_state)
    h_ref = sequential_recurrence(cell, (u,), h0)
    h, info = newton_recurrence(cell, (u,), h0, structure=structure, chunk_size=4)
    assert info.converged and info.residual <= 1e-12 and info.iterations <= min(steps, 10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    weight = torch.randn(h.shape, dtype=F64)
    grads_ref = torch.autograd.grad((h_ref * weight).sum(), [u, w, h0])
    grads = torch.autograd.grad((h * weight).sum(), [u, w, h0])
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("structure", ["diagonal", "block2"])
def test_k_iterations_make_the_first_k_steps_exact_and_the_rest_is_reported(structure):
    cell, _, u, h0 = _setup(structure, 64, True, seed=1)
    h_ref = sequential_recurrence(cell, (u,), h0).detach()
    h, info = newton_recurrence(cell, (u,), h0, structure=structure, max_iter=1)
    assert info.iterations == 1 and not info.converged and info.residual > info.tol
    # One linear solve is exact at the first step, and out = f(h¹) at the second.
    torch.testing.assert_close(h[:, :2], h_ref[:, :2], rtol=1e-12, atol=1e-12)
    assert (h - h_ref).abs().max() > 1e-6


def test_no_graph_through_the_iterations():
    """Only the final cell evaluation is recorded: the backward graph has one tanh."""
    cell, _, u, h0 = _setup("diagonal", 13, True)
    h, info = newton_recurrence(cell, (u,), h0)
    assert info.iterations > 1
    names, stack, seen = [], [h.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    assert sum("Tanh" in n for n in names) == 1


def test_unknown_structure_is_rejected():
    cell, _, u, h0 = _setup("diagonal", 3, False)
    with pytest.raises(ValueError, match="structure"):
        newton_recurrence(cell, (u,), h0, structure="dense")


def test_projecting_the_iterates_onto_the_states_range_keeps_the_solution():
    """tanh states lie in [-1, 1]: clamping each iterate there changes nothing at the end."""
    cell, _, u, h0 = _setup("diagonal", 37, False, seed=2)
    u = (4 * u).detach()  # saturating inputs, where the first linear solves overshoot
    h_ref = sequential_recurrence(cell, (u,), h0).detach()
    h, info = newton_recurrence(cell, (u,), h0, project=lambda h: h.clamp(-1.0, 1.0))
    assert info.converged
    torch.testing.assert_close(h.detach(), h_ref, rtol=1e-10, atol=1e-10)
