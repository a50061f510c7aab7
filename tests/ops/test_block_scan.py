"""The chunked 2×2 block scan against its step-by-step loop, forward and backward."""

from __future__ import annotations

import pytest
import torch

from seqlab.ops.block_scan import block2_adjoint, block2_scan

F64 = torch.float64


def _scan_and_grads(mode, a, b, h0, w, chunk_size):
    leaves = [t.detach().requires_grad_() for t in (a, b) + (() if h0 is None else (h0,))]
    h = block2_scan(
        leaves[0],
        leaves[1],
        initial_state=None if h0 is None else leaves[2],
        mode=mode,
        chunk_size=chunk_size,
    )
    return h.detach(), torch.autograd.grad((h * w).sum(), leaves)


@pytest.mark.parametrize("steps", [1, 4, 13, 37, 150])
@pytest.mark.parametrize("with_state", [False, True])
def test_block2_scan_matches_loop_forward_and_backward_float64(steps, with_state):
    gen = torch.Generator().manual_seed(steps)
    a = 0.6 * torch.randn(2, steps, 3, 2, 2, generator=gen, dtype=F64)
    b = torch.randn(2, steps, 3, 2, generator=gen, dtype=F64)
    h0 = torch.randn(2, 3, 2, generator=gen, dtype=F64) if with_state else None
    w = torch.randn(2, steps, 3, 2, generator=gen, dtype=F64)
    h_ref, grads_ref = _scan_and_grads("recurrent", a, b, h0, w, 4)
    for chunk_size in (4, 64):
        h, grads = _scan_and_grads("parallel", a, b, h0, w, chunk_size)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_block2_scan_uses_the_full_matrices_not_their_diagonals():
    """A rotation moves all of h_{-1} into the other component."""
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64).expand(1, 3, 1, 2, 2)
    h = block2_scan(
        rot,
        torch.zeros(1, 3, 1, 2, dtype=F64),
        initial_state=torch.tensor([[[1.0, 0.0]]], dtype=F64),
    )
    expected = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    torch.testing.assert_close(h[0, :, 0], expected)


def test_block2_adjoint_solves_the_transposed_reverse_recurrence():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 9, 2, 2, 2, generator=gen, dtype=F64)
    grad = torch.randn(1, 9, 2, 2, generator=gen, dtype=F64)
    lam = block2_adjoint(a, grad, chunk_size=4)
    expected = grad.clone()
    for t in range(7, -1, -1):
        expected[:, t] += (a[:, t + 1].transpose(-1, -2) @ expected[:, t + 1, ..., None])[..., 0]
    torch.testing.assert_close(lam, expected, rtol=1e-10, atol=1e-10)


def test_block2_scan_rejects_a_shape_that_is_not_2x2_blocks():
    with pytest.raises(ValueError, match="2, 2"):
        block2_scan(torch.zeros(1, 3, 2, 3, 3), torch.zeros(1, 3, 2, 3))
