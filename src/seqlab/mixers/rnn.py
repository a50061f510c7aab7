"""Recurrent mixers: minGRU (log-space parallel scan), LSTM and GRU (torch's fused kernels),
LRU (complex diagonal scan). Every layout runs through `scan_in_layout`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import (
    ALL_LAYOUTS,
    Layout,
    Mixer,
    check_expand,
    check_input,
    check_scan_layout,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.scan import diagonal_scan, log_space_scan
from seqlab.registry import MIXERS


def log_g(x: Tensor) -> Tensor:
    """log g(x) for minGRU's positive activation g(x) = x + 1/2 (x ≥ 0), σ(x) (x < 0)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


@dataclass
class MinGRUState:
    """The hidden state `h [B, hidden]`, positive (zero before the first token), and the
    short conv's last d_conv − 1 inputs `[B, d_conv − 1, d_model]` (None without a conv)."""

    h: Tensor
    conv: Tensor | None = None


@MIXERS.register("mingru")
class MinGRU(Mixer):
    """minGRU (Feng et al., "Were RNNs All We Needed?", 2024) behind a short causal conv.

    x̃ = conv(x) (depthwise, `d_conv` taps; identity when d_conv = 0), then
    z_t = σ(W_z x̃_t + b_z), h̃_t = g(W_h x̃_t + b_h), h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,
    y_t = W_out h_t, with g(v) = v + 1/2 (v ≥ 0), σ(v) (v < 0) so that h stays positive.
    The gates read only the input, so the recurrence is linear in h and runs as a parallel
    scan in log space: log(1 − z_t) = −softplus(k_t), log z_t = −softplus(−k_t), log g(·).
    Shapes: x `[B, T, d_model]`, h `[B, T, hidden]` with hidden = expand · d_model.

    The conv is not in the paper (d_conv = 0 gives its cell exactly). A minGRU channel is a
    positive moving average, so reading "the token k steps back" needs differences of
    averages with large weights; the conv gives each gate the last few tokens directly, as
    in Mamba's and Griffin's recurrent blocks.
    Other layouts (`scan_in_layout`): the same conv and cell also run over the reversed
    sequence (or each block of it); the directions are summed before the output projection.
    """

    layouts = ALL_LAYOUTS


    def __init__(self, d_model: int, *, expand: int = 1, d_conv: int = 4) -> None:
        super().__init__()
        check_expand(expand, "mingru")
        if not isinstance(d_conv, int) or d_conv < 0:
            raise ConfigError(f"mingru d_conv must be a non-negative integer, got {d_conv!r}")
        self.d_model, self.hidden = d_model, expand * d_model
        self.conv = ShortConv(d_model, d_conv, activation=None) if d_conv else None
        self.proj = nn.Linear(d_model, 2 * self.hidden)
        self.out = nn.Linear(self.hidden, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: MinGRUState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, MinGRUState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "mingru")
        h, new_state = scan_in_layout(
            lambda inputs, s: self._recur(*inputs, s), (x,), state, layout, self.init_state
        )
        return self.out(h.to(x.dtype)), new_state

    def _recur(self, x: Tensor, state: MinGRUState | None) -> tuple[Tensor, MinGRUState | None]:
        """h `[B, T, hidden]` (float32, or float64 for float64 inputs) and the new state."""
        conv_state = None
        if self.conv is not None:
            x, conv_state = self.conv(x, None if state is None else state.conv)
        dtype = state_dtype(x.dtype)
        k, pre = self.proj(x).to(dtype).chunk(2, dim=-1)
        log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(pre)
        if state is None:
            return log_space_scan(log_a, log_b)[0], None
        h, log_h_last = log_space_scan(
            log_a, log_b, initial_log_state=state.h.to(dtype).log(), output_final_state=True
        )
        return h, MinGRUState(
            log_h_last.exp(), None if conv_state is None else conv_state.to(dtype)
        )

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MinGRUState:
        weight = self.out.weight
        device, dtype = device or weight.device, state_dtype(dtype or weight.dtype)
        conv = (
            None
            if self.conv is None
            else self.conv.init_state(batch_size, device=device, dtype=dtype)
        )
        return MinGRUState(torch.zeros(batch_size, self.hidden, device=device, dtype=dtype), conv)

    def state_size(self, seq_len: int) -> int:
        return self.hidden + (0 if self.conv is None else self.conv.state_size())

    def mixing_flops(self, seq_len: int) -> float:
        """Per hidden unit: two softplus and log g (~4 each) and the log-space scan's
        cumsum, logcumsumexp and logaddexp (~8); plus the conv's 2 · d_conv per input channel."""
        conv = 0 if self.conv is None else 2.0 * self.conv.kernel_size * self.d_model
        return 20.0 * self.hidden + conv


@dataclass
class RNNState:
    """The hidden state `h [B, hidden]` and, for the LSTM, the cell `c [B, hidden]`."""

    h: Tensor
    c: Tensor | None = None


class FusedRNN(Mixer):
    """A single-layer LSTM or GRU (torch's fused kernel) followed by an output projection.

    LSTM: i, f, o = σ(W x_t + U h_{t−1} + b), g = tanh(…), c_t = f ⊙ c_{t−1} + i ⊙ g,
    h_t = o ⊙ tanh(c_t). GRU: r, z = σ(…), n = tanh(W_n x_t + r ⊙ (U_n h_{t−1} + b)),
    h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}. Then y_t = W_out h_t.
    Shapes: x `[B, T, d_model]`, h `[B, T, hidden]`, hidden = expand · d_model.
    Training and decoding run the same module; the state is (h, c) or h.
    Weights keep torch's U(±1/√hidden) init; the LSTM forget-gate bias starts at 1
    (Jozefowicz et al., 2015) so that early gradients flow through the cell.
    Other layouts (`scan_in_layout`): the same cell also runs over the reversed sequence (or
    each block of it); the directions are summed before the output projection.
    """

    layouts = ALL_LAYOUTS


    def __init__(self, d_model: int, *, cell: str, expand: int = 1) -> None:
        super().__init__()
        check_expand(expand, cell)
        self.cell, self.d_model, self.hidden = cell, d_model, expand * d_model
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_class(d_model, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, d_model, bias=False)
        self._reset_rnn()

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self._reset_rnn()

    @torch.no_grad()
    def _reset_rnn(self) -> None:
        self.rnn.reset_parameters()
        if self.cell == "lstm":
            forget = slice(self.hidden, 2 * self.hidden)
            self.rnn.bias_ih_l0[forget] = 1.0
            self.rnn.bias_hh_l0[forget] = 0.0

    def forward(
        self,
        x: Tensor,
        state: RNNState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, RNNState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, self.cell)
        h, new_state = scan_in_layout(
            lambda inputs, s: self._recur(*inputs, s), (x,), state, layout, self.init_state
        )
        return self.out(h), new_state

    def _recur(self, x: Tensor, state: RNNState | None) -> tuple[Tensor, RNNState | None]:
        """h `[B, T, hidden]` from `state` (zeros when None) and the new state."""
        if state is None:
            return self.rnn(x)[0], None
        hx = state.h.to(x.dtype)[None]
        if self.cell == "lstm":
            hx = (hx, state.c.to(x.dtype)[None])
        h, last = self.rnn(x, hx)
        h_last, c_last = last if self.cell == "lstm" else (last, None)
        dtype = state_dtype(x.dtype)
        new_state = RNNState(h_last[0].to(dtype), None if c_last is None else c_last[0].to(dtype))
        return h, new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNState:
        weight = self.out.weight
        zeros = torch.zeros(
            batch_size,
            self.hidden,
            device=device or weight.device,
            dtype=state_dtype(dtype or weight.dtype),
        )
        return RNNState(zeros, zeros.clone() if self.cell == "lstm" else None)

    def state_size(self, seq_len: int) -> int:
        return (2 if self.cell == "lstm" else 1) * self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """The cell's own matmuls (2 · gates · hidden · (d_model + hidden)) plus ~5 element-wise
        ops per gate unit (activations and the state update)."""
        gates = 4 if self.cell == "lstm" else 3
        return gates * self.hidden * (2.0 * (self.d_model + self.hidden) + 5)





@MIXERS.register("lstm")
class LSTM(FusedRNN):
    """LSTM (torch's fused kernel) with an output projection; see `FusedRNN`."""

    def __init__(self, d_model: int, *, expand: int = 1) -> None:
        super().__init__(d_model, cell="lstm", expand=expand)


@MIXERS.register("gru")
class GRU(FusedRNN):
    """GRU (torch's fused kernel) with an output projection; see `FusedRNN`."""

    def __init__(self, d_model: int, *, expand: int = 1) -> None:
        super().__init__(d_model, cell="gru", expand=expand)


@dataclass
class LRUState:
    """The complex state stored as real pairs, `h [B, d_state, 2]`."""

    h: Tensor


@MIXERS.register("lru")
class LRU(Mixer):
    """Linear Recurrent Unit (Orvieto et al., "Resurrecting Recurrent Neural Networks for Long
    Sequences", 2023).

    λ = exp(−exp(ν) + i exp(θ)) (|λ| < 1 for any ν, θ), h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t),
    y_t = Re(C h_t) + D ⊙ x_t, run with `diagonal_scan` on complex values.
    Shapes: x `[B, T, d_model]`, h `[B, T, d_state]` complex.
    B is `in_proj` (rows Re B, Im B) and C is `out` (columns Re C, −Im C), so C takes the
    model's residual output scale; the rest is the paper's init: |λ| uniform on the ring
    [r_min, r_max] (by area), arg λ ~ U[0, max_phase], γ = √(1 − |λ|²) (then trained, in
    log space), B ~ CN(0, 1/d_model), D ~ N(0, 1).
    Other layouts (`scan_in_layout`): the same recurrence also scans the reversed sequence (or
    each block of it); the states are summed before C.
    """

    layouts = ALL_LAYOUTS


    def __init__(
        self,
        d_model: int,
        *,
        d_state: int | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        d_state = d_state or d_model
        if d_state < 1:
            raise ConfigError(f"lru d_state must be positive, got {d_state}")
        if not 0 <= r_min < r_max <= 1:
            raise ConfigError(f"lru needs 0 <= r_min < r_max <= 1, got {r_min}, {r_max}")
        self.d_model, self.d_state = d_model, d_state
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.nu_log = nn.Parameter(torch.empty(d_state))
        self.theta_log = nn.Parameter(torch.empty(d_state))
        self.gamma_log = nn.Parameter(torch.empty(d_state))
        self.in_proj = nn.Linear(d_model, 2 * d_state, bias=False)
        self.D = nn.Parameter(torch.empty(d_model))
        self.out = nn.Linear(2 * d_state, d_model, bias=False)
        self._reset_structured()

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self._reset_structured()

    @torch.no_grad()
    def _reset_structured(self) -> None:
        # |λ|² uniform in [r_min², r_max²] is uniform by area on the ring; the clamp keeps
        # log |λ| finite at the ends of the default ring [0, 1].
        radius_sq = torch.rand_like(self.nu_log) * (self.r_max**2 - self.r_min**2) + self.r_min**2
        radius_sq = radius_sq.clamp(1e-8, 1 - 1e-8)
        self.nu_log.copy_(torch.log(-0.5 * torch.log(radius_sq)))
        self.theta_log.copy_(torch.log(self.max_phase * torch.rand_like(self.theta_log) + 1e-8))
        self.gamma_log.copy_(0.5 * torch.log1p(-radius_sq))
        nn.init.normal_(self.in_proj.weight, std=(2 * self.d_model) ** -0.5)
        nn.init.normal_(self.D)

    def eigenvalues(self) -> Tensor:
        """λ `[d_state]`, complex."""
        return torch.exp(torch.complex(-self.nu_log.exp(), self.theta_log.exp()))

    def forward(
        self,
        x: Tensor,
        state: LRUState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LRUState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "lru")
        dtype = state_dtype(x.dtype)
        re, im = self.in_proj(x).to(dtype).chunk(2, dim=-1)
        inputs = self.gamma_log.exp().to(dtype) * torch.complex(re, im)
        decay = self.eigenvalues().to(inputs.dtype)

        def recur(parts: tuple[Tensor, ...], s: LRUState | None) -> tuple[Tensor, LRUState | None]:
            h0 = None if s is None else torch.view_as_complex(s.h.to(dtype).contiguous())
            h, h_last = diagonal_scan(
                decay, parts[0], initial_state=h0, output_final_state=s is not None
            )
            return h, None if s is None else LRUState(torch.view_as_real(h_last))

        h, new_state = scan_in_layout(recur, (inputs,), state, layout, self.init_state)
        y = self.out(torch.cat([h.real, h.imag], dim=-1).to(x.dtype)) + self.D * x
        return y, new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LRUState:
        return LRUState(
            torch.zeros(
                batch_size,
                self.d_state,
                2,
                device=device or self.D.device,
                dtype=state_dtype(dtype or self.D.dtype),
            )
        )

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_state

    def mixing_flops(self, seq_len: int) -> float:
        """Per complex state number: γ scaling and the scan's complex multiply-add (~10);
        plus the D skip (2 per model channel)."""
        return 10.0 * self.d_state + 2.0 * self.d_model
