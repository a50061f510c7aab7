"""Mega's damped multi-dimensional EMA: a chunked exact form, an FFT form, and the loop.

Each of ``D`` channels expands its input into ``N`` real modes (Ma et al., 2023, "Mega")::

    h_t = q ⊙ h_{t−1} + g ⊙ u_t          h_t ∈ R^N per channel, h_{−1} = initial state
    y_t = Σ_n c_n h_{t,n}

with decay ``q = 1 − α ⊙ δ ∈ (0, 1)``, input gain ``g = α ⊙ β`` and readout ``c = η / √N``
(the parameterisation lives in the mixer; here they are plain tensors). The map from ``u`` to
``y`` is a linear time-invariant filter per channel, from a zero state a causal convolution

    y_t = Σ_{s≤t} k_{t−s} u_s,    k_l = Σ_n c_n g_n q_n^l          (``ema_kernel``)

and a carried state adds ``Σ_n c_n q_n^{t+1} h_{−1,n}``.

Shapes: ``u, y [B, T, D]``; ``q, g, c [D, N]``; states ``[B, D, N]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.ops.fftconv import fft_conv
from seqlab.ops.float32 import float32_kernel
from seqlab.ops.scan import diagonal_scan

EMAMode = Literal["chunked", "fft", "recurrent"]
EMA_MODES = ("chunked", "fft", "recurrent")


def ema_powers(decay: Tensor, length: int, start: int = 0) -> Tensor:
    """``q^l`` for ``l = start … start + length − 1``: ``[D, N, length]`` (decay in (0, 1))."""
    lags = torch.arange(start, start + length, device=decay.device, dtype=decay.dtype)
    return torch.exp(decay.log()[..., None] * lags)


@float32_kernel
def ema_kernel(decay: Tensor, gain: Tensor, readout: Tensor, length: int) -> Tensor:
    """The convolution kernel ``k [length, D]``, ``k_l = Σ_n c_n g_n q_n^l``."""
    return torch.einsum("dn,dnl->ld", readout * gain, ema_powers(decay, length))


@float32_kernel
def damped_ema(
    u: Tensor,
    decay: Tensor,
    gain: Tensor,
    readout: Tensor,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: EMAMode = "chunked",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """The EMA ``y [B, T, D]`` of ``u [B, T, D]`` from ``initial_state [B, D, N]`` (zero when
    None), and the final state ``h_{T−1} [B, D, N]`` when ``output_final_state``.

    * ``"chunked"``: inside chunks of ``chunk_size`` steps a masked Toeplitz product with
      ``k_0 … k_{C−1}``; across chunks the recurrence on the states at chunk boundaries (decay
      ``q^C``, by ``diagonal_scan``). Linear in T, and exactly causal: no input reaches an
      earlier output, not even through rounding.
    * ``"fft"``: ``fft_conv`` with the whole kernel ``k_0 … k_{T−1}`` (O(T log T)); causal up to
      FFT rounding (~eps relative), which reaches every output.
    * ``"recurrent"``: the reference loop over time steps.

    All three differentiate by autograd; the result has the promoted dtype of the inputs.
    """
    if mode not in EMA_MODES:
        raise ValueError(f"mode must be one of {EMA_MODES}, got {mode!r}")
    if u.dim() != 3 or decay.shape != gain.shape or decay.shape != readout.shape:
        raise ValueError(
            f"expected u [B, T, D] and decay, gain, readout [D, N], got {list(u.shape)}, "
            f"{list(decay.shape)}, {list(gain.shape)}, {list(readout.shape)}"
        )
    if mode == "recurrent":
        return _loop(u, decay, gain, readout, initial_state, output_final_state)
    if mode == "fft":
        return _fft(u, decay, gain, readout, initial_state, output_final_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return _chunked(u, decay, gain, readout, initial_state, output_final_state, chunk_size)


def _loop(
    u: Tensor,
    decay: Tensor,
    gain: Tensor,
    readout: Tensor,
    h: Tensor | None,
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """Reference: ``h_t = q ⊙ h_{t−1} + g ⊙ u_t``, ``y_t = Σ_n c_n h_{t,n}``, step by step."""
    if h is None:
        h = u.new_zeros(u.shape[0], *decay.shape)
    ys = []
    for t in range(u.shape[1]):
        h = decay * h + gain * u[:, t, :, None]
        ys.append((readout * h).sum(-1))
    return torch.stack(ys, 1), h if output_final_state else None


def _fft(
    u: Tensor,
    decay: Tensor,
    gain: Tensor,
    readout: Tensor,
    h0: Tensor | None,
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    steps = u.shape[1]
    y, _ = fft_conv(u, ema_kernel(decay, gain, readout, steps))
    if h0 is not None:
        y = y + torch.einsum("bdn,dnt->btd", h0, readout[..., None] * ema_powers(decay, steps, 1))
    if not output_final_state:
        return y, None
    # h_{T−1} = q^T h_{−1} + Σ_s q^{T−1−s} g u_s
    h_last = torch.einsum("btd,dnt->bdn", u, gain[..., None] * ema_powers(decay, steps).flip(-1))
    if h0 is not None:
        h_last = h_last + decay**steps * h0
    return y, h_last


def _chunked(
    u: Tensor,
    decay: Tensor,
    gain: Tensor,
    readout: Tensor,
    h0: Tensor | None,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[Tensor, Tensor | None]:
    batch, steps, _ = u.shape
    size = min(chunk_size, steps)
    n_chunks = -(-steps // size)
    chunks = F.pad(u, (0, 0, 0, n_chunks * size - steps)).unflatten(1, (n_chunks, size))
    powers = ema_powers(decay, size + 1)  # q^0 … q^C
    lag = torch.arange(size, device=u.device)
    lag = lag[:, None] - lag[None, :]
    kernel = torch.einsum("dn,dnl->ld", readout * gain, powers[..., :size])
    toeplitz = torch.where((lag >= 0)[..., None], kernel[lag.clamp(min=0)], 0.0)
    y = torch.einsum("tsd,bksd->bktd", toeplitz, chunks)
    if h0 is None and n_chunks == 1 and not output_final_state:
        return y[:, 0], None

    if h0 is None:
        h0 = u.new_zeros(batch, *decay.shape)
    # q^{C−1−s} g: what input s of a chunk leaves in the state at the chunk's end
    into_state = gain[..., None] * powers[..., :size].flip(-1)
    totals = torch.einsum("bksd,dns->bkdn", chunks, into_state)
    ends, _ = diagonal_scan(powers[..., size], totals, initial_state=h0)
    starts = torch.cat([h0[:, None], ends[:, :-1]], dim=1)
    from_state = torch.einsum("bkdn,dnt->bktd", starts, readout[..., None] * powers[..., 1:])
    y = (y + from_state).flatten(1, 2)[:, :steps]
    if not output_final_state:
        return y, None
    tail = steps - (n_chunks - 1) * size
    h_last = powers[..., tail] * starts[:, -1] + torch.einsum(
        "bsd,dns->bdn", chunks[:, -1, :tail], into_state[..., size - tail :]
    )
    return y, h_last
