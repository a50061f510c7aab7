"""Linear recurrences with 2×2 block-diagonal transitions: a chunked parallel form and its loop.

``block2_scan`` solves ``h_t = A_t h_{t-1} + b_t`` over dim 1 of ``h, b: [B, T, N, 2]`` with
``A_t: [B, T, N, 2, 2]``: N independent channels, each with a two-component state (e.g. an
LSTM's ``(c, h)``). It is the chunked scan of ``seqlab.ops.scan`` with matrix products in
place of the diagonal scan's element-wise ones: inside a chunk each position gets
``(P_t, B_t)``, the product of the transitions since the chunk start and the state reached
from a zero start, so ``h_t = P_t h_start + B_t``; the chunk totals form a recurrence of the
same kind, solved recursively (``log_C(T)`` deep).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.ops.float32 import float32_kernel
from seqlab.ops.scan import ScanMode, _check_mode, _chunked_scan, _loop


@float32_kernel
def block2_scan(
    a: Tensor,
    b: Tensor,
    *,
    initial_state: Tensor | None = None,
    mode: ScanMode = "parallel",
    chunk_size: int = 64,
) -> Tensor:
    """The recurrence ``h_t = A_t h_{t-1} + b_t`` with 2×2 blocks, ``h_{-1} = initial_state``.

    Args:
        a: transitions ``[B, T, N, 2, 2]``, ``a[..., i, j] = ∂h_t[i] / ∂h_{t-1}[j]``.
        b: inputs ``[B, T, N, 2]``.
        initial_state: ``h_{-1}`` of shape ``[B, N, 2]``; zeros when None.
        mode: ``"parallel"`` (chunked, with a hand-written backward that is the same scan
            run backward in time) or ``"recurrent"`` (the reference loop over time, through
            autograd).
        chunk_size: steps per chunk in the parallel form (>= 2).

    Returns:
        ``h`` of shape ``[B, T, N, 2]`` in the promoted dtype of the inputs.
    """
    _check_mode(mode, chunk_size)
    if a.dim() != 5 or a.shape[-2:] != (2, 2) or b.shape != a.shape[:-1] or b.shape[1] == 0:
        raise ValueError(
            f"expected a [B, T>=1, N, 2, 2] and b [B, T, N, 2], got {list(a.shape)}, "
            f"{list(b.shape)}"
        )
    dtype = torch.promote_types(a.dtype, b.dtype)
    if initial_state is None:
        h0 = b.new_zeros(b.shape[0], *b.shape[2:], dtype=dtype)
    else:
        dtype = torch.promote_types(dtype, initial_state.dtype)
        h0 = initial_state.to(dtype).expand(b.shape[0], *b.shape[2:])
    a, b = a.to(dtype), b.to(dtype)
    if mode == "recurrent":
        return _loop(a, b, h0, lambda a_t, b_t, h: _matvec(a_t, h) + b_t)
    return _Block2Scan.apply(a, b, h0, chunk_size)


def _matvec(a: Tensor, v: Tensor) -> Tensor:
    """``a @ v`` over the last dims: ``[..., 2, 2] × [..., 2] -> [..., 2]``."""
    return (a * v.unsqueeze(-2)).sum(-1)


def _matmul(a: Tensor, c: Tensor) -> Tensor:
    """``a @ c`` over the last dims: ``[..., 2, 2] × [..., 2, 2] -> [..., 2, 2]``."""
    return (a.unsqueeze(-1) * c.unsqueeze(-3)).sum(-2)


def _within_chunks(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan over dim -2 of component-major pairs ``a: [..., C, 4N]`` (entries 00, 01,
    10, 11, each N wide) and ``b: [..., C, 2N]``: ``P_t = A_t P_{t-1}``,
    ``B_t = A_t B_{t-1} + b_t`` from ``P_{-1} = I``, ``B_{-1} = 0``. One vectorised step per
    chunk position, each entry a multiply and a fused multiply-add over every chunk and
    channel at once (see ``seqlab.ops.scan._within_chunks``)."""
    a, b = a.unflatten(-1, (4, -1)), b.unflatten(-1, (2, -1))
    cum_a, cum_b = torch.empty_like(a), torch.empty_like(b)
    cum_a[..., 0, :, :] = a[..., 0, :, :]
    cum_b[..., 0, :, :] = b[..., 0, :, :]
    for t in range(1, a.shape[-3]):
        a00, a01, a10, a11 = a[..., t, :, :].unbind(-2)
        q00, q01, q10, q11 = cum_a[..., t - 1, :, :].unbind(-2)
        p00, p01, p10, p11 = cum_a[..., t, :, :].unbind(-2)
        torch.mul(a00, q00, out=p00).addcmul_(a01, q10)
        torch.mul(a00, q01, out=p01).addcmul_(a01, q11)
        torch.mul(a10, q00, out=p10).addcmul_(a11, q10)
        torch.mul(a10, q01, out=p11).addcmul_(a11, q11)
        v0, v1 = cum_b[..., t - 1, :, :].unbind(-2)
        w0, w1 = cum_b[..., t, :, :].unbind(-2)
        b0, b1 = b[..., t, :, :].unbind(-2)
        torch.addcmul(b0, a00, v0, out=w0).addcmul_(a01, v1)
        torch.addcmul(b1, a10, v0, out=w1).addcmul_(a11, v1)
    return cum_a.flatten(-2), cum_b.flatten(-2)


def _finish(cum_a: Tensor, cum_b: Tensor, h: Tensor) -> Tensor:
    """``P_t h_start + B_t`` on the component-major layout."""
    product = cum_a.unflatten(-1, (2, 2, -1)) * h.unflatten(-1, (1, 2, -1))
    return (product.sum(-2) + cum_b.unflatten(-1, (2, -1))).flatten(-2)


def _parallel(a: Tensor, b: Tensor, h0: Tensor, chunk_size: int) -> Tensor:
    """``a [B, T, N, 2, 2]``, ``b [B, T, N, 2]``, ``h0 [B, N, 2]`` -> ``h [B, T, N, 2]``."""
    batch, steps, channels = b.shape[:3]
    h = _chunked_scan(
        a.permute(0, 1, 3, 4, 2).reshape(batch, steps, 4 * channels),
        b.transpose(-1, -2).reshape(batch, steps, 2 * channels),
        h0.transpose(-1, -2).reshape(batch, 2 * channels),
        chunk_size,
        _within_chunks,
        _finish,
    )
    return h.unflatten(-1, (2, channels)).transpose(-1, -2)


class _Block2Scan(torch.autograd.Function):
    """The parallel block scan with its adjoint as backward: for upstream gradients ``ḡ_t``,
    ``g_t = ḡ_t + A_{t+1}^T g_{t+1}`` (the same scan, reversed in time, on the transposed
    blocks); then ``∂b_t = g_t``, ``∂A_t = g_t h_{t-1}^T`` and ``∂h_{-1} = A_0^T g_0``."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        h = _parallel(a, b, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor):  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        g = block2_adjoint(a, grad_h, ctx.chunk_size)
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
        grad_a = g.unsqueeze(-1) * h_prev.unsqueeze(-2)
        grad_h0 = _matvec(a[:, 0].transpose(-1, -2), g[:, 0])
        return grad_a, g, grad_h0, None


@float32_kernel
def block2_adjoint(a: Tensor, grad: Tensor, chunk_size: int = 64) -> Tensor:
    """The reverse recurrence ``g_t = grad_t + A_{t+1}^T g_{t+1}`` (``g_T = 0``), by the
    parallel scan run backward in time: ``a [B, T, N, 2, 2]``, ``grad [B, T, N, 2]``."""
    a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1).transpose(-1, -2)
    zeros = grad.new_zeros(grad.shape[0], *grad.shape[2:])
    return _parallel(a_next.flip(1), grad.flip(1), zeros, chunk_size).flip(1)
