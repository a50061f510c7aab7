"""Mega: a damped multi-dimensional EMA followed by single-head gated attention.

Ma, Zhou, Kong, He, Gui, Neubig, May, Zettlemoyer, "Mega: Moving Average Equipped Gated
Attention" (ICLR 2023). The EMA kernel is `seqlab.ops.ema`; attention is computed here, over
the whole causal context or, with `chunk`, inside chunks of c tokens (Mega-chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.attention import KVCache
from seqlab.mixers.base import Mixer, check_input, no_weight_decay, state_dtype
from seqlab.mixers.common import check_positive
from seqlab.ops.ema import damped_ema, ema_kernel
from seqlab.ops.fftconv import fft_conv
from seqlab.registry import MIXERS

MEGA_ATTENTIONS = ("laplace", "softmax")
MEGA_EMA_MODES = ("chunked", "fft")
# Laplace attention function: μ and σ chosen so that it approximates relu² near 0 (the paper)
LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(0.25 / math.pi)


def laplace(x: Tensor) -> Tensor:
    """f(x) = ½ [1 + erf((x − μ) / (σ √2))], μ = √½, σ = √(1/4π): Mega's attention function."""
    return 0.5 * (1.0 + torch.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))


@dataclass
class MegaState:
    """Decode state: the EMA's hidden `ema [B, d_model, ndim]` and the attention's `kv`
    (`KVCache` with one head: keys `[B, S, 1, z_dim]`, values `[B, S, 1, v_dim]`). Without
    `chunk`, S = the tokens seen (it grows); with `chunk` c, S = c − 1 slots, left-padded at
    position −1, holding the current chunk's tokens (a completed chunk is never read again)."""

    ema: Tensor
    kv: KVCache


class DampedEMA(nn.Module):
    """The EMA's parameters per channel and mode: α, δ, β, η `[channels, ndim]`.

    h_t = α ⊙ β u_t + (1 − α ⊙ δ) ⊙ h_{t−1},  y_t = η ⋅ h_t / √ndim, with α = σ(α̃), δ = σ(δ̃)
    (so the decay 1 − α δ lies in (0, 1)). Init as Mega: α̃, δ̃ ~ N(0, 0.2²),
    β ~ (1, −1, 1, …) + N(0, 0.02²), η ~ N(0, 1).
    """

    def __init__(self, channels: int, ndim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(channels, ndim))
        self.delta = nn.Parameter(torch.empty(channels, ndim))
        self.beta = nn.Parameter(torch.empty(channels, ndim))
        self.eta = nn.Parameter(torch.empty(channels, ndim))
        no_weight_decay(self.alpha, self.delta)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        ndim = self.alpha.shape[1]
        self.alpha.normal_(std=0.2)
        self.delta.normal_(std=0.2)
        signs = torch.ones(ndim)
        signs[1::2] = -1.0
        self.beta.normal_(std=0.02).add_(signs)
        self.eta.normal_(std=1.0)

    def coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        """(decay q = 1 − αδ, gain g = αβ, readout c = η/√N), each `[channels, ndim]`."""
        alpha = torch.sigmoid(self.alpha)
        decay = 1.0 - alpha * torch.sigmoid(self.delta)
        return decay, alpha * self.beta, self.eta / math.sqrt(self.alpha.shape[1])

    def kernel(self, length: int) -> Tensor:
        """k `[length, channels]`, k_l = Σ_n c_n g_n q_n^l."""
        return ema_kernel(*self.coefficients(), length)


@MIXERS.register("mega")
class Mega(Mixer):
    """Mega (Ma et al., 2023): a damped multi-dimensional EMA, then single-head gated
    attention (Laplace or softmax), optionally inside chunks of c tokens (Mega-chunk).

    With x `[B, T, d]` the mixer's (normalised) input, N = ndim, z = z_dim, v = expand · d::

        X' = SiLU(EMA(x) + ω ⊙ x)                    EMA per channel with N modes (`DampedEMA`)
        V  = SiLU(x W_v + b_v)                       [B, T, v]
        φ, Z, γ, H_x = split(X' W_m + b_m)          update gate, shared rep., reset gate, ...
        φ = σ(φ),  Z = SiLU(Z) [B, T, z],  γ = SiLU(γ) [B, T, v]
        Q = κ_q ⊙ Z + μ_q,  K = κ_k ⊙ Z + μ_k        per-dimension scale and offset
        O_t = Σ_s A_ts V_s,  s visible from t (causal: s ≤ t; with `chunk`: same chunk)
            laplace:  A_ts = f(Q_t·K_s / n_t + b_{t−s}),  n_t = number of visible s
            softmax:  A_t· = softmax_s(Q_t·K_s / √z + b_{t−s})
        Ĥ = SiLU(H_x + (γ ⊙ O) W_h + b_h)            [B, T, d]
        y = φ ⊙ (Ĥ − x)

    Mega's layer outputs φ ⊙ Ĥ + (1 − φ) ⊙ x, its own residual; seqlab's Block adds the
    residual (and the MLP, Mega's normalised FFN) itself, so this mixer returns the layer's
    output minus its input, φ ⊙ (Ĥ − x), and the Block's sum x_res + y equals Mega's update
    gate interpolating between the residual and Ĥ (exactly so where the pre-norm is the
    identity). b is a learned bias per relative distance (`relative_bias` entries, farther
    distances share the last; 0: none).

    The EMA from a zero state is a causal convolution with k_l = Σ_n c_n g_n q_n^l. Training
    computes it in chunks (`ema_mode: chunked`: a Toeplitz product inside 64-step chunks and
    the recurrence across them, linear and exactly causal) or with the whole kernel by FFT
    (`ema_mode: fft`, O(T log T), causal up to FFT rounding, so the exact-zero causality
    check of `seqlab check` does not hold for it); decoding runs the same chunked form from
    the carried state (a single step is the scan h_t = q ⊙ h_{t−1} + g u_t). The
    bidirectional layout adds a second, reversed EMA (lags 1 … T) by `fft_conv`'s two-sided
    kernel and lets attention read its whole context (or chunk).

    State (`MegaState`): the EMA's hidden `[B, d, N]` and the keys and values of the context
    (`KVCache`): it grows with the context, or, with `chunk`, stays at c − 1 slots (Mega-chunk
    decodes in constant memory and declares a fixed state).
    """

    layouts = frozenset({LayoutKind.CAUSAL, LayoutKind.BIDIRECTIONAL})
    unused_in_causal = ("ema_reverse",)
    sequence_parallel_refusal = (
        "its attention (Laplace or softmax with a relative-position bias, optionally in "
        "chunks) has no sharded kernel"
    )
    state_kind = "kv_cache"

    def __init__(
        self,
        d_model: int,
        *,
        ndim: int = 16,
        z_dim: int | None = None,
        expand: int = 2,
        attention: str = "laplace",
        chunk: int | None = None,
        relative_bias: int = 128,
        ema_mode: str = "chunked",
    ) -> None:
        super().__init__()
        z_dim = max(d_model // 4, 1) if z_dim is None else z_dim
        check_positive("mega", ndim=ndim, z_dim=z_dim, expand=expand)
        if chunk is not None:
            check_positive("mega", chunk=chunk)
        if isinstance(relative_bias, bool) or not isinstance(relative_bias, int):
            raise ConfigError(f"mega relative_bias must be an integer >= 0, got {relative_bias!r}")
        if relative_bias < 0:
            raise ConfigError(f"mega relative_bias must be an integer >= 0, got {relative_bias}")
        if attention not in MEGA_ATTENTIONS:
            raise ConfigError(f"mega attention must be one of {MEGA_ATTENTIONS}, got {attention!r}")
        if ema_mode not in MEGA_EMA_MODES:
            raise ConfigError(f"mega ema_mode must be one of {MEGA_EMA_MODES}, got {ema_mode!r}")
        self.d_model, self.ndim, self.z_dim = d_model, ndim, z_dim
        self.v_dim = expand * d_model
        self.attention, self.chunk, self.ema_mode = attention, chunk, ema_mode
        if chunk is not None:
            self.state_kind = "fixed"
        self.ema = DampedEMA(d_model, ndim)
        self.ema_reverse = DampedEMA(d_model, ndim)
        self.omega = nn.Parameter(torch.randn(d_model))
        self.v_proj = nn.Linear(d_model, self.v_dim)
        self.mx_proj = nn.Linear(d_model, 2 * d_model + z_dim + self.v_dim)
        self.qk_scale = nn.Parameter(torch.randn(2, z_dim) * 0.02)
        self.qk_offset = nn.Parameter(torch.zeros(2, z_dim))
        self.relative_bias = relative_bias
        self.rel_bias = (
            nn.Parameter(torch.randn(2 * relative_bias - 1) * 0.02) if relative_bias else None
        )
        self.out = nn.Linear(self.v_dim, d_model)

    def forward(
        self,
        x: Tensor,
        state: MegaState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, MegaState | None]:
        """`x [B, T, d_model]` -> (y, state). `positions` is ignored: chunks and relative
        distances count from the first token (the state's offset when continuing)."""
        check_input(x, self.d_model)
        causal = layout.kind is LayoutKind.CAUSAL
        if layout.kind not in self.layouts or (state is not None and not causal):
            raise SeqlabError(
                "mega supports the causal layout (from a state or not) and the bidirectional "
                f"layout (without a state), got {layout.kind!r}"
                + ("" if state is None else " with a state")
            )
        mixed, ema_state = self._ema(x, state, causal)
        v = F.silu(self.v_proj(x))
        phi, z, gamma, h_x = self.mx_proj(mixed).split(
            [self.d_model, self.z_dim, self.v_dim, self.d_model], dim=-1
        )
        z = F.silu(z)
        q, k = (z[..., None, :] * self.qk_scale + self.qk_offset).unbind(-2)
        if state is None:
            o, new_state = self._attend_blocks(q, k, v, causal), None
        else:
            o, kv = self._attend_cached(q, k, v, state.kv)
            new_state = MegaState(ema_state, kv)
        h = F.silu(h_x + self.out(F.silu(gamma) * o))
        return torch.sigmoid(phi) * (h - x), new_state

    def _ema(self, x: Tensor, state: MegaState | None, causal: bool) -> tuple[Tensor, Tensor]:
        """X' = SiLU(EMA(x) + ω ⊙ x) `[B, T, d]` and the EMA's final hidden (when stateful)."""
        if not causal:
            steps = x.shape[1]
            kernel = torch.stack([self.ema.kernel(steps), self.ema_reverse.kernel(steps + 1)[1:]])
            y, h_last = fft_conv(x, kernel, bidirectional=True)[0], None
        else:
            h0 = None if state is None else state.ema.to(x.dtype)
            mode = self.ema_mode if state is None else "chunked"
            y, h_last = damped_ema(
                x,
                *self.ema.coefficients(),
                initial_state=h0,
                output_final_state=state is not None,
                mode=mode,
            )
            if h_last is not None:
                h_last = h_last.to(state.ema.dtype)
        return F.silu(y + self.omega * x), h_last

    def _attend_blocks(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """O `[B, T, v]` over a whole sequence from position 0: one block, or with `chunk` c
        the full chunks as a batch of blocks and the shorter last chunk by itself."""
        batch, steps, _ = q.shape
        size = steps if self.chunk is None else min(self.chunk, steps)
        full = steps - steps % size
        parts = []
        if full:
            blocks = [u[:, :full].reshape(-1, size, u.shape[-1]) for u in (q, k, v)]
            pos = torch.arange(size, device=q.device)[None]
            parts.append(self._attend(*blocks, pos, pos, causal).reshape(batch, full, -1))
        if full < steps:
            pos = torch.arange(steps - full, device=q.device)[None]
            parts.append(self._attend(q[:, full:], k[:, full:], v[:, full:], pos, pos, causal))
        return torch.cat(parts, dim=1)

    def _attend_cached(
        self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache
    ) -> tuple[Tensor, KVCache]:
        """Causal O `[B, T, v]` for new tokens continuing `cache`, and the new cache. With
        `chunk` c the tokens go in pieces of c, each reading the cached current chunk."""
        steps = q.shape[1]
        piece = steps if self.chunk is None else self.chunk
        parts = []
        for start in range(0, steps, piece):
            end = min(start + piece, steps)
            q_pos = cache.offset[:, None] + torch.arange(end - start, device=q.device)
            keys = torch.cat([cache.k, k[:, start:end, None]], dim=1)
            values = torch.cat([cache.v, v[:, start:end, None]], dim=1)
            k_pos = torch.cat([cache.positions, q_pos], dim=1)
            parts.append(
                self._attend(q[:, start:end], keys[:, :, 0], values[:, :, 0], q_pos, k_pos, True)
            )
            cache = self._keep(keys, values, k_pos, q_pos[:, -1] + 1)
        return torch.cat(parts, dim=1), cache

    def _keep(self, keys: Tensor, values: Tensor, k_pos: Tensor, offset: Tensor) -> KVCache:
        """The cache after a piece: every entry, or with `chunk` the c − 1 newest slots with
        those before the current chunk (starting at `offset` rounded down) turned to padding,
        copied so that the state holds no view of the prefill."""
        if self.chunk is None:
            return KVCache(keys, values, k_pos, offset)
        slots = self.chunk - 1
        first = keys.shape[1] - slots
        keys, values, k_pos = keys[:, first:], values[:, first:], k_pos[:, first:]
        start = offset - offset % self.chunk
        live = k_pos >= start[:, None]
        keep = live[..., None, None]
        return KVCache(
            torch.where(keep, keys, 0.0),
            torch.where(keep, values, 0.0),
            torch.where(live, k_pos, -1),
            offset,
        )

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, causal: bool
    ) -> Tensor:
        """O = A V `[B, T_q, v]` for q `[B, T_q, z]`, k `[B, T_k, z]`, v `[B, T_k, v]` at
        positions `[B or 1, T_q]`, `[B or 1, T_k]` (−1: padding, never read)."""
        lag = q_pos[:, :, None] - k_pos[:, None, :]
        visible = (k_pos >= 0)[:, None, :]
        if causal:
            visible = visible & (lag >= 0)
        if self.chunk is not None:
            visible = visible & (q_pos[:, :, None] // self.chunk == k_pos[:, None, :] // self.chunk)
        scores = q @ k.transpose(1, 2)
        if self.attention == "softmax":
            scores = scores / math.sqrt(self.z_dim) + self._bias(lag)
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        else:
            count = visible.sum(-1, keepdim=True).clamp(min=1)
            weights = laplace(scores / count + self._bias(lag)) * visible
        return weights @ v

    def _bias(self, lag: Tensor) -> Tensor | float:
        """b_{t−s}: one learned scalar per distance, clamped to ±(relative_bias − 1)."""
        if self.rel_bias is None:
            return 0.0
        reach = self.relative_bias - 1
        return self.rel_bias[lag.clamp(-reach, reach) + reach]

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MegaState:
        device = device or self.omega.device
        dtype = dtype or self.omega.dtype
        slots = 0 if self.chunk is None else self.chunk - 1
        kv = KVCache(
            torch.zeros(batch_size, slots, 1, self.z_dim, device=device, dtype=dtype),
            torch.zeros(batch_size, slots, 1, self.v_dim, device=device, dtype=dtype),
            torch.full((batch_size, slots), -1, dtype=torch.long, device=device),
            torch.zeros(batch_size, dtype=torch.long, device=device),
        )
        ema = torch.zeros(
            batch_size, self.d_model, self.ndim, device=device, dtype=state_dtype(dtype)
        )
        return MegaState(ema, kv)

    def state_size(self, seq_len: int) -> int:
        kept = seq_len if self.chunk is None else self.chunk - 1
        return self.d_model * self.ndim + (self.z_dim + self.v_dim) * kept

    def mixing_flops(self, seq_len: int) -> float:
        """Per token: the chunked EMA (a 64-tap Toeplitz product, 2 · 64, and writing and
        reading the chunk-boundary states, 4N, per channel) and attention's Q·K and A·V
        (2 (z + v) per visible key, (T + 1)/2 on average, at most c)."""
        ema = self.d_model * (2.0 * min(64, seq_len) + 4.0 * self.ndim)
        context = (seq_len + 1) / 2 if self.chunk is None else min(self.chunk, (seq_len + 1) / 2)
        return ema + 2.0 * (self.z_dim + self.v_dim) * context
