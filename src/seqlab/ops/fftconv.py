"""Long depthwise convolution along time by FFT, and its step-by-step loop."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ConvMode = Literal["fft", "direct"]


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
