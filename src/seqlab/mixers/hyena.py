"""Hyena (Poli et al., 2023): short-conv projections gating long implicit convolutions.

Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Ré, "Hyena Hierarchy: Towards Larger
Convolutional Language Models" (ICML 2023). The long filters are an FFN of a positional
encoding of the lag, windowed by an exponential decay; training convolves by FFT (exactly
causal by blocks, `causal_fft_conv`); decoding caches the streams each filter reads and
convolves at the newest position directly, so the state grows with the context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import CAUSAL_ONLY, Layout, LayoutKind
from seqlab.mixers.base import Mixer, ValueMap, check_input, keep_init, no_weight_decay
from seqlab.mixers.common import check_bool, check_positive
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.fftconv import _next_fast_len, causal_fft_conv, fft_conv
from seqlab.registry import MIXERS

# Prefills up to this many tokens from a cache gather their taps directly; longer ones
# convolve the whole history by blocked FFT and keep the new outputs.
DIRECT_STEPS = 8


def direct_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """The step-by-step reference: y_t = Σ_{s≤t} kernel[t−s] ⊙ u_s, one output at a time."""
    return fft_conv(u, kernel, mode="direct")[0]


@dataclass
class HyenaHistory:
    """The cached streams (a `seqlab.state.GrowingState`): `streams [B, P, N, D]` holds, for
    each of the P tokens seen, the N inputs z^0 … z^{N−1} of the N long convolutions.

    Rows may hold different numbers of tokens: they are left-padded with zeros. Each filter
    tap is indexed by the lag from the newest column, so a zero column of padding contributes
    nothing and the real entries keep their lags.
    """

    streams: Tensor

    @classmethod
    def concat(cls, items: Sequence[HyenaHistory]) -> HyenaHistory:
        """The rows of `items` in order, each left-padded to the longest."""
        length = max(item.streams.shape[1] for item in items)
        return cls(torch.cat([item.pad_to(length).streams for item in items]))

    def pad_to(self, length: int) -> HyenaHistory:
        """Left-padded with zero columns to `length` tokens."""
        missing = length - self.streams.shape[1]
        if missing <= 0:
            return self
        pad = self.streams.new_zeros(self.streams.shape[0], missing, *self.streams.shape[2:])
        return HyenaHistory(torch.cat([pad, self.streams], dim=1))

    def drop_last(self, drop: Tensor | int) -> HyenaHistory:
        raise SeqlabError(
            "a hyena state cannot forget tokens by itself (its short conv keeps no history); "
            "re-run them from a saved state"
        )


@dataclass
class HyenaState:
    """`history`: the cached convolution inputs (`HyenaHistory`); `conv`: the short conv's
    last k − 1 projected inputs `[B, k − 1, (N + 1) · D]`."""

    history: HyenaHistory
    conv: Tensor


class HyenaFilter(nn.Module):
    """N implicit long filters of `channels` channels each, as functions of the lag t ≥ 0:

        h(t) = W_out · sin(ω ⊙ W_2 · sin(ω ⊙ W_1 · sin(ω ⊙ W_0 · PE(t) + b_0) + b_1) + b_2)
        h_n,c(t) ← h_n,c(t) · exp(−|δ_c| · t / (max_len − 1))        (when `modulate`)

    PE(t) = [t / (max_len − 1), cos(f_k w_t), −sin(f_k w_t)]_{k < K}, w_t = 2π t / max_len,
    f = linspace(1e-4, K − 1, K), K = (emb_dim − 1) / 2 bands. The sine frequencies ω `[width]`
    (init `sine_freq`) are one learned vector shared by the three sines. The decay rates δ_c
    run linearly over the channels from ln(target) / slow_decay to ln(target) / fast_decay, so
    at the normalised time `fast_decay` (resp. `slow_decay`) the fastest (resp. slowest)
    window has fallen to `target` = 1e-2. Lags beyond max_len extrapolate the same formulas.

    Shapes: `forward(length)` -> h `[length, N, channels]`.
    """

    def __init__(
        self,
        channels: int,
        order: int,
        *,
        width: int,
        emb_dim: int,
        sine_freq: float,
        max_len: int,
        fast_decay: float,
        slow_decay: float,
        modulate: bool,
        target: float = 1e-2,
    ) -> None:
        super().__init__()
        self.channels, self.order, self.max_len, self.modulate = channels, order, max_len, modulate
        bands = (emb_dim - 1) // 2
        self.register_buffer("bands", torch.linspace(1e-4, bands - 1, bands), persistent=False)
        log_target = math.log(target)
        decays = torch.linspace(log_target / slow_decay, log_target / fast_decay, channels)
        self.register_buffer("decays", decays.abs(), persistent=False)
        self.freq = nn.Parameter(torch.full((width,), float(sine_freq)))
        self.layers = nn.ModuleList(
            [nn.Linear(emb_dim, width), nn.Linear(width, width), nn.Linear(width, width)]
        )
        self.head = nn.Linear(width, order * channels, bias=False)
        params = [self.freq, *self.layers.parameters(), *self.head.parameters()]
        keep_init(*params)
        no_weight_decay(*params)

    def times(self, length: int) -> Tensor:
        """The lags 0 … length − 1 normalised by max_len − 1 `[length]`."""
        lags = torch.arange(length, device=self.freq.device, dtype=self.freq.dtype)
        return lags / (self.max_len - 1)

    def positional(self, length: int) -> Tensor:
        """PE(t) `[length, emb_dim]`."""
        lags = torch.arange(length, device=self.freq.device, dtype=self.freq.dtype)
        angle = (2 * math.pi / self.max_len) * lags[:, None] * self.bands.to(lags.dtype)
        return torch.cat([self.times(length)[:, None], angle.cos(), -angle.sin()], dim=-1)

    def forward(self, length: int) -> Tensor:
        h = self.positional(length)
        for layer in self.layers:
            h = torch.sin(self.freq * layer(h))
        h = self.head(h).view(length, self.order, self.channels)
        if self.modulate:
            window = torch.exp(-self.times(length)[:, None] * self.decays.to(h.dtype))
            h = h * window[:, None, :]
        return h

    def flops(self) -> float:
        """FLOPs per lag: the four linear maps, the sines and the window."""
        width, emb_dim = self.freq.shape[0], self.layers[0].in_features
        out = self.order * self.channels
        return 2.0 * (emb_dim * width + 2 * width * width + width * out) + 6.0 * width + 2.0 * out


@MIXERS.register("hyena")
class Hyena(Mixer):
    """Hyena (Poli et al., 2023): an order-N recurrence of gates and long implicit
    convolutions, v and the gates from short-conv projections of the input.

        v, x¹ … xᴺ = split(ShortConv(W_in u))           each [B, T, D], D = expand · d_model
        z⁰ = v,  zⁿ = xⁿ ⊙ (hⁿ * zⁿ⁻¹ + Dⁿ ⊙ zⁿ⁻¹),  n = 1 … N
        y = W_out zᴺ

    with (h * z)_t = Σ_{s≤t} h(t − s) ⊙ z_s per channel, the filters hⁿ `[T, D]` from
    `HyenaFilter` (an FFN of the lag's positional encoding, times a decay window) and Dⁿ `[D]`
    a learned skip (the reference's filter bias). Shapes: x, y `[B, T, d_model]`; the short
    conv (kernel `short_conv`, with bias, no activation) runs over the (N + 1) · D projected
    channels.

    This is the operator as the paper defines it (N filters for order N). The public safari
    code instead gates before each convolution and multiplies the last gate outside,
    z ← hⁿ * (xⁿ ⊙ z) + ..., y = x⁰ ⊙ z, with N − 1 filters. Its language-model settings are
    the defaults here: filter FFN width 64 (`filter_order`), positional encoding of 33
    features (`emb_dim`: the time and 16 cosine / sine bands), sine frequency 14, short conv
    3, exponential modulation with fast / slow decay 0.3 / 1.5, filters not normalised. The
    positional encoding is a fixed function of the lag here (safari learns its table).

    Training convolves with `causal_fft_conv` (O(log² T) per token, exactly causal).
    Decoding keeps zⁿ for n < N of every token (`HyenaHistory`, N · D numbers per token) and
    the short conv's last inputs; a step computes each order's convolution at the newest
    position directly from the cached history, O(T · N · D) at context T.
    """

    layouts = CAUSAL_ONLY
    state_kind = "kv_cache"
    linear_in_values = True

    def __init__(
        self,
        d_model: int,
        *,
        order: int = 2,
        expand: int = 1,
        filter_order: int = 64,
        emb_dim: int = 33,
        sine_freq: float = 14.0,
        short_conv: int = 3,
        max_len: int = 1024,
        fast_decay: float = 0.3,
        slow_decay: float = 1.5,
        modulate: bool = True,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        check_positive(
            "hyena",
            order=order,
            expand=expand,
            filter_order=filter_order,
            short_conv=short_conv,
            chunk_size=chunk_size,
            emb_dim=emb_dim,
            max_len=max_len,
        )
        check_bool("hyena", modulate=modulate)
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ConfigError(f"hyena emb_dim must be an odd integer >= 3, got {emb_dim!r}")
        if max_len < 2:
            raise ConfigError(f"hyena max_len must be an integer >= 2, got {max_len!r}")
        if not 0 < fast_decay <= slow_decay:
            raise ConfigError(
                f"hyena needs 0 < fast_decay <= slow_decay, got {fast_decay}, {slow_decay}"
            )
        if not math.isfinite(sine_freq) or sine_freq <= 0:
            raise ConfigError(f"hyena sine_freq must be a positive number, got {sine_freq}")
        self.d_model, self.order, self.d_inner = d_model, order, expand * d_model
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, (order + 1) * self.d_inner, bias=False)
        self.conv = ShortConv((order + 1) * self.d_inner, short_conv, activation=None)
        self.filter = HyenaFilter(
            self.d_inner,
            order,
            width=filter_order,
            emb_dim=emb_dim,
            sine_freq=sine_freq,
            max_len=max_len,
            fast_decay=fast_decay,
            slow_decay=slow_decay,
            modulate=modulate,
        )
        self.D = nn.Parameter(torch.randn(order, self.d_inner))
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: HyenaState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, HyenaState | None]:
        check_input(x, self.d_model)
        if layout.kind is not LayoutKind.CAUSAL:
            raise SeqlabError(f"hyena supports the causal layout only, got {layout.kind!r}")
        u, conv_state = self.conv(self.in_proj(x), None if state is None else state.conv)
        v, *gates = u.chunk(self.order + 1, dim=-1)
        if state is None:
            filters = self.filter(x.shape[1])
            z, _ = self._recurrence(v, gates, filters, self._conv)
            return self.out(z), None

        history = state.history.streams.to(v.dtype)
        past, steps = history.shape[1], x.shape[1]
        filters = self.filter(past + steps)
        z, inputs = self._recurrence(v, gates, filters, self._continue, history)
        streams = torch.cat([history, torch.stack(inputs, dim=2)], dim=1)
        return self.out(z), HyenaState(HyenaHistory(streams), conv_state)

    def _recurrence(
        self,
        v: Tensor,
        gates: list[Tensor],
        filters: Tensor,
        conv: Callable[..., Tensor],
        history: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """zᴺ `[B, T, D]` and the convolution inputs z⁰ … zᴺ⁻¹ of the new tokens; with a
        `history [B, P, N, D]` each convolution reads the cached inputs before them."""
        z, inputs = v, []
        for n, gate in enumerate(gates):
            inputs.append(z)
            if history is None:
                long = conv(z, filters[:, n])
            else:
                long = conv(torch.cat([history[:, :, n], z], dim=1), filters[:, n], z.shape[1])
            z = gate * (long + self.D[n] * z)
        return z, inputs

    def _conv(self, u: Tensor, kernel: Tensor) -> Tensor:
        return causal_fft_conv(u, kernel, block=self.chunk_size)

    def _continue(self, u: Tensor, kernel: Tensor, steps: int) -> Tensor:
        """The causal convolution of `u [B, P + S, D]` at its last S = `steps` positions."""
        if steps > DIRECT_STEPS:
            return self._conv(u, kernel)[:, -steps:]
        first = u.shape[1] - steps
        ends = range(first + 1, first + steps + 1)
        return torch.stack([(kernel[:end].flip(0) * u[:, :end]).sum(1) for end in ends], dim=1)

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """One head per inner channel, its value v `[B, T, D, 1]`; the gates xⁿ and filters
        are fixed, so zᴺ is linear in v. The map runs the recurrence with `direct_conv`."""
        v, *gates = self.conv(self.in_proj(x))[0].chunk(self.order + 1, dim=-1)
        filters = self.filter(x.shape[1])
        output, _ = self._recurrence(v, gates, filters, self._conv)

        def value_map(values: Tensor) -> Tensor:
            batch, steps, channels, width = values.shape
            folded = values.permute(0, 3, 1, 2).reshape(batch * width, steps, channels)
            repeated = [g.repeat_interleave(width, dim=0) for g in gates]
            z, _ = self._recurrence(folded, repeated, filters, direct_conv)
            return z.view(batch, width, steps, channels).permute(0, 2, 3, 1)

        return v[..., None], output[..., None], value_map

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> HyenaState:
        device = device or self.D.device
        dtype = dtype or self.D.dtype
        streams = torch.zeros(batch_size, 0, self.order, self.d_inner, device=device, dtype=dtype)
        conv = self.conv.init_state(batch_size, device=device, dtype=dtype)
        return HyenaState(HyenaHistory(streams), conv)

    def state_size(self, seq_len: int) -> int:
        """N · D cached numbers per token seen, plus the short conv's k − 1 inputs."""
        return seq_len * self.order * self.d_inner + self.conv.state_size()

    def mixing_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token of the parallel form: the filter FFN at every lag (counted
        for one sequence; a batch shares it), the short conv (2k per channel), and per order
        and channel the blocked FFT convolution (2C for the diagonal squares, C = min(chunk,
        T); per level b = C, 2C, … < T one real FFT pair of size n ≈ 4b and a complex product
        per window of 2b tokens: (5 n log₂ n + 3n) / 2b), the skip and the gate (3)."""
        size = min(self.chunk_size, seq_len)
        conv = 2.0 * size
        half = size
        while half < seq_len:
            n = _next_fast_len(4 * half)
            conv += (5.0 * n * math.log2(n) + 3.0 * n) / (2 * half)
            half *= 2
        short = 2.0 * self.conv.kernel_size * (self.order + 1) * self.d_inner
        return self.filter.flops() + short + self.order * self.d_inner * (conv + 3.0)
