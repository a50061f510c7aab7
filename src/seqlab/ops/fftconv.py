"""Long depthwise convolution along time by FFT (plain, and exactly causal by blocks), and its
step-by-step loop."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.ops.float32 import float32_kernel

ConvMode = Literal["fft", "direct"]


@float32_kernel
def fft_conv(
    u: Tensor,
    kernel: Tensor,
    *,
    bidirectional: bool = False,
    mode: ConvMode = "fft",
) -> tuple[Tensor, None]:
    """Per-channel long convolution of ``u`` with a kernel as long as the sequence.

    Causal (``kernel: [L, D]``)::

        y_t = Σ_{s=0}^{t} kernel[t-s] ⊙ u_s

    Bidirectional (``kernel: [2, L, D]``; ``k0 = kernel[0]`` holds lags ``0..L-1`` into the past,
    ``k1 = kernel[1]`` lags ``1..L`` into the future)::

        y_t = Σ_{s<=t} k0[t-s] ⊙ u_s + Σ_{s>t} k1[s-t-1] ⊙ u_s

    Taps beyond the kernel length are zero. ``L < T`` is zero-padded; taps with lag ``>= T``
    cannot reach any output, so ``L > T`` is truncated to ``T``.

    The ``"fft"`` form multiplies ``rfft``s of size ``n >= 2T`` (the next 5-smooth size), so the
    circular convolution never wraps: causal taps sit at ``[0, L)`` and anti-causal taps at
    ``[n-L, n)``. Its causality holds up to FFT rounding (``~eps`` relative), not bit-exactly.
    ``"direct"`` is the reference loop over output steps.

    Args:
        u: input ``[B, T, D]``, real floating point.
        kernel: ``[L, D]`` (causal) or ``[2, L, D]`` (bidirectional), ``L >= 1``.
        bidirectional: use the two-sided kernel.
        mode: ``"fft"`` or ``"direct"``.

    Returns:
        ``(y, None)``: ``y`` of shape ``[B, T, D]`` in the promoted dtype of ``u`` and ``kernel``
        (half precision is computed in float32). A long convolution has no fixed-size state, so
        the final state is always None.
    """
    if mode not in ("fft", "direct"):
        raise ValueError(f"mode must be 'fft' or 'direct', got {mode!r}")
    _check_shapes(u, kernel, bidirectional)
    dtype = torch.promote_types(u.dtype, kernel.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"expected real floating-point u and kernel, got {dtype}")
    steps = u.shape[1]
    kernel = kernel[..., :steps, :]
    if mode == "direct":
        return _direct(u.to(dtype), kernel.to(dtype), bidirectional), None

    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    n = _next_fast_len(2 * steps)
    if bidirectional:
        causal, anti = kernel.to(compute).unbind(0)
        gap = causal.new_zeros(n - 2 * causal.shape[0], causal.shape[1])
        kernel = torch.cat([causal, gap, anti.flip(0)], dim=0)
    k_f = torch.fft.rfft(kernel.to(compute), n=n, dim=0)
    u_f = torch.fft.rfft(u.to(compute), n=n, dim=1)
    y = torch.fft.irfft(u_f * k_f, n=n, dim=1)[:, :steps]
    return y.to(dtype), None


@float32_kernel
def causal_fft_conv(u: Tensor, kernel: Tensor, *, block: int = 64) -> Tensor:
    """Causal long convolution ``y_t = Σ_{s≤t} kernel[t-s] ⊙ u_s`` that is causal exactly.

    One FFT over the whole sequence lets its rounding reach every output from every input;
    here each FFT reads only inputs earlier than every output it writes (the "relaxed" or
    online convolution). The (t, s) triangle is cut dyadically:

    - diagonal squares of ``C = min(block, T)`` steps: a masked Toeplitz product
      ``y[jC + i] += Σ_{r≤i} kernel[i-r] ⊙ u[jC + r]`` (exact zeros above the diagonal);
    - for ``b = C, 2C, 4C, … < T``: in every window of ``2b`` steps the first half feeds the
      second, ``y[w + b + i] += Σ_{r<b} kernel[b+i-r] ⊙ u[w + r]`` (lags ``1 … 2b-1``), one
      ``fft_conv`` of length ``2b`` per window whose second half of inputs is constant zero.

    Every pair ``s < t`` in different C-blocks falls in exactly one window half-pair, so the
    sum is the convolution. Cost per token and channel: ``2C`` for the squares plus one
    length-``2b`` FFT convolution per level (``⌈log2(T/C)⌉`` levels), O(C + log² T) in all.

    Args:
        u: ``[B, T, D]``, real floating point.
        kernel: ``[L, D]``, ``L >= 1``; taps beyond ``L`` are zero, those at lag ``>= T``
            unused.
        block: the diagonal square ``C`` (>= 1).

    Returns:
        ``y [B, T, D]`` in the promoted dtype of ``u`` and ``kernel``; ``fft_conv(...,
        mode="direct")`` is its reference.
    """
    _check_shapes(u, kernel, False)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    dtype = torch.promote_types(u.dtype, kernel.dtype)
    batch, steps, dim = u.shape
    u = u.to(dtype)
    kernel = kernel[:steps].to(dtype)
    kernel = F.pad(kernel, (0, 0, 0, steps - kernel.shape[0]))
    size = min(block, steps)
    n_blocks = -(-steps // size)
    lag = torch.arange(size, device=u.device)
    lag = lag[:, None] - lag[None, :]
    toeplitz = torch.where((lag >= 0)[..., None], kernel[lag.clamp(min=0)], 0.0)  # [C, C, D]
    blocks = F.pad(u, (0, 0, 0, n_blocks * size - steps)).unflatten(1, (n_blocks, size))
    y = torch.einsum("tsd,bnsd->bntd", toeplitz, blocks).flatten(1, 2)[:, :steps]
    half = size
    while half < steps:
        windows = -(-steps // (2 * half))
        padded = F.pad(u, (0, 0, 0, windows * 2 * half - steps)).unflatten(1, (windows, 2 * half))
        first = F.pad(padded[:, :, :half], (0, 0, 0, half)).flatten(0, 1)  # [B·W, 2b, D]
        late, _ = fft_conv(first, kernel[: 2 * half])
        late = F.pad(late.unflatten(0, (batch, windows))[:, :, half:], (0, 0, half, 0))
        y = y + late.flatten(1, 2)[:, :steps]
        half *= 2
    return y


def _check_shapes(u: Tensor, kernel: Tensor, bidirectional: bool) -> None:
    if u.dim() != 3:
        raise ValueError(f"expected u of shape [batch, time, dim], got {list(u.shape)}")
    dim = u.shape[2]
    if bidirectional:
        ok = kernel.dim() == 3 and kernel.shape[0] == 2 and kernel.shape[2] == dim
        expected = f"[2, L, D={dim}]"
    else:
        ok = kernel.dim() == 2 and kernel.shape[1] == dim
        expected = f"[L, D={dim}]"
    if not ok or kernel.shape[-2] < 1:
        kind = "bidirectional" if bidirectional else "causal"
        raise ValueError(
            f"expected {kind} kernel of shape {expected} with L >= 1, got {list(kernel.shape)}"
        )


def _direct(u: Tensor, kernel: Tensor, bidirectional: bool) -> Tensor:
    """Reference: each ``y_t`` summed over its taps, one output step at a time."""
    steps = u.shape[1]
    kernel = F.pad(kernel, (0, 0, 0, steps - kernel.shape[-2]))
    causal, anti = kernel.unbind(0) if bidirectional else (kernel, None)
    out = []
    for t in range(steps):
        y_t = (causal[: t + 1].flip(0) * u[:, : t + 1]).sum(dim=1)
        if anti is not None:
            y_t = y_t + (anti[: steps - t - 1] * u[:, t + 1 :]).sum(dim=1)
        out.append(y_t)
    return torch.stack(out, dim=1)


def _next_fast_len(n: int) -> int:
    """Smallest ``2^i 3^j 5^k >= n``: sizes that pocketfft and cuFFT transform fastest."""
    best = 1 << max(n - 1, 0).bit_length()
    odd5 = 1
    while odd5 < best:
        odd = odd5
        while odd < best:
            size = odd
            while size < n:
                size *= 2
            best = min(best, size)
            odd *= 3
        odd5 *= 5
    return best
