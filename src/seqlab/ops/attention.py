"""Softmax attention: an SDPA wrapper, its plain reference, rotary embeddings and mask builders.

Masks are boolean `[T_q, T_k]` with True where a query may read a key (the SDPA convention).
Positions are absolute token indices; a decode step with `offset` cached tokens has queries
at positions offset .. offset + T_q - 1 and keys at 0 .. offset + T_q - 1.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# `enable_gqa` (PyTorch >= 2.5) lets SDPA read a shared key/value head without repeating it.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def causal_mask(
    t_q: int,
    t_k: int | None = None,
    *,
    window: int | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Query i (at position t_k - t_q + i) reads key j iff j <= its position (and within window)."""
    t_k = t_q if t_k is None else t_k
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


def block_causal_mask(t: int, block_size: int, *, device: torch.device | None = None) -> Tensor:
    """Blocks of `block_size` tokens read themselves fully and every earlier block."""
    block = torch.arange(t, device=device) // block_size
    return block[None, :] <= block[:, None]


def block_diffusion_mask(
    length: int, block_size: int, *, device: torch.device | None = None
) -> Tensor:
    """Mask `[2L, 2L]` over the vectorised training sequence [x_t ; x_0] (BD3-LM).

    A noised token (first half) reads its own noised block and the clean blocks before it;
    a clean token (second half) reads clean blocks up to and including its own.
    """
    block = torch.arange(length, device=device) // block_size
    same = block[:, None] == block[None, :]
    earlier = block[None, :] < block[:, None]
    upto = block[None, :] <= block[:, None]
    top = torch.cat([same, earlier], dim=1)
    bottom = torch.cat([torch.zeros_like(same), upto], dim=1)
    return torch.cat([top, bottom], dim=0)


def prefix_mask(mask: Tensor, n_prefix: int) -> Tensor:
    """Extend a `[T_q, T]` mask with `n_prefix` leading keys every query may read (a cache)."""
    visible = torch.ones(mask.shape[0], n_prefix, dtype=torch.bool, device=mask.device)
    return torch.cat([visible, mask], dim=1)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """o = softmax(scale · q kᵀ + mask) v in the seqlab layout.

    q `[B, T_q, H, D]`, k and v `[B, T_k, H_kv, D]` with H a multiple of H_kv (grouped-query
    attention), mask boolean broadcastable to `[B, H, T_q, T_k]`. Returns `[B, T_q, H, D]`.
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    options = {}
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:  # the kernel indexes the shared key/value head: no repeated copies
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **options
    )
    return out.transpose(1, 2)


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """The same as `scaled_dot_product_attention` written out with an explicit softmax."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    repeat = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(repeat, dim=2)
    v = v.repeat_interleave(repeat, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


def rotary_angles(
    positions: Tensor, dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin of shape `[*positions.shape, dim]` for rotary embeddings (half-split pairs)."""
    inv_freq = theta ** (
        -torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim
    )
    angles = positions.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


@functools.lru_cache(maxsize=16)
def arange_rotary_angles(
    t: int, dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`rotary_angles(arange(t)[None], ...)`, `[1, t, dim]`, memoised: every layer and step
    of a training run reads the same constants instead of recomputing them. Callers must not
    modify the returned tensors in place."""
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable under autograd
        positions = torch.arange(t, device=device)[None]
        return rotary_angles(positions, dim, theta, dtype=dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) of `x [B, T, H, D]` by angles `cos/sin [B or 1, T, D]`.

    out = x · cos + rotate_half(x) · sin with rotate_half(x) = [−x_2, x_1]. The fast form
    (a fused autograd function, bitwise equal to the plain expression forward and backward)
    runs when cos/sin are constants of x's dtype; otherwise the plain expression does.
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if cos.dtype == sin.dtype == x.dtype and not (cos.requires_grad or sin.requires_grad):
        return _Rotary.apply(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class _Rotary(torch.autograd.Function):
    """x · cos + [−x_2, x_1] · sin without the autograd graph of neg/cat/slices.

    Its gradient is the inverse rotation, g · cos + [g_2 · sin_2, −g_1 · sin_1]: the same
    products and sums autograd forms for the plain expression, so the results are bitwise equal.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # type: ignore[override]
        half = x.shape[-1] // 2
        rotated = torch.empty_like(x)
        torch.neg(x[..., half:], out=rotated[..., :half])
        rotated[..., half:] = x[..., :half]
        out = x * cos
        out += rotated.mul_(sin)
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        grad_sin = grad * sin
        grad_x = grad * cos
        grad_x[..., :half] += grad_sin[..., half:]
        grad_x[..., half:] -= grad_sin[..., :half]
        return grad_x, None, None
