"""Recurrent mixers: minGRU (log-space parallel scan), LSTM and GRU (torch's fused kernels).

Also the two rules every scan-based mixer here and in `s4d`/`mamba` shares: which layouts a
fixed-state recurrence serves, and the dtype its state is kept in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.mixers.base import Layout, Mixer, check_input
from seqlab.ops.scan import log_space_scan
from seqlab.registry import MIXERS


def check_scan_layout(layout: Layout, state: object, name: str) -> None:
    """A scan reads causally, or both ways (a forward plus a reversed scan, summed); a carried
    state can only be continued causally."""
    if layout.kind not in ("causal", "bidirectional"):
        raise SeqlabError(f"{name} supports the causal and bidirectional layouts, "
                          f"got {layout.kind!r}")
    if state is not None and not layout.is_causal:
        raise SeqlabError(f"{name} continues from a state only in the causal layout, "
                          f"got {layout.kind!r}")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states are kept in float32, or float64 when the module runs in float64."""
    return torch.promote_types(dtype, torch.float32)


def check_expand(expand: int, name: str) -> None:
    if not isinstance(expand, int) or expand < 1:
        raise ConfigError(f"{name} expand must be a positive integer, got {expand!r}")


def log_g(x: Tensor) -> Tensor:
    """log g(x) for minGRU's positive activation g(x) = x + 1/2 (x ≥ 0), σ(x) (x < 0)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


@dataclass
class MinGRUState:
    """The hidden state `h [B, hidden]`, positive (zero before the first token)."""

    h: Tensor


class MinGRU(Mixer):
    """minGRU (Feng et al., "Were RNNs All We Needed?", 2024), then an output projection.

    z_t = σ(W_z x_t + b_z), h̃_t = g(W_h x_t + b_h), h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,
    y_t = W_out h_t. The gates read only x_t, so the recurrence is linear in h and runs as a
    parallel scan in log space: log(1 − z_t) = −softplus(k_t), log z_t = −softplus(−k_t),
    and g > 0 keeps h positive, so log h̃_t exists.
    Shapes: x `[B, T, d_model]`, h `[B, T, hidden]` with hidden = expand · d_model.
    Bidirectional layout: the same cell also scans the reversed sequence; the two are summed.
    """

    def __init__(self, d_model: int, *, expand: int = 1) -> None:
        super().__init__()
        check_expand(expand, "mingru")
        self.d_model, self.hidden = d_model, expand * d_model
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
        k, pre = self.proj(x).to(state_dtype(x.dtype)).chunk(2, dim=-1)
        log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(pre)
        if state is None:
            h, _ = log_space_scan(log_a, log_b)
            if layout.kind == "bidirectional":
                h = h + log_space_scan(log_a.flip(1), log_b.flip(1))[0].flip(1)
            new_state = None
        else:
            h, log_h_last = log_space_scan(
                log_a, log_b, initial_log_state=state.h.to(log_a.dtype).log(),
                output_final_state=True,
            )
            new_state = MinGRUState(log_h_last.exp())
        return self.out(h.to(x.dtype)), new_state

    def init_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MinGRUState:
        weight = self.out.weight
        return MinGRUState(torch.zeros(batch_size, self.hidden, device=device or weight.device,
                                       dtype=state_dtype(dtype or weight.dtype)))

    def state_size(self, seq_len: int) -> int:
        return self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """Per hidden unit: two softplus and log g (~4 each) and the log-space scan's
        cumsum, logcumsumexp and logaddexp (~8)."""
        return 20.0 * self.hidden


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
    Bidirectional layout: the same cell also runs over the reversed sequence; summed.
    """

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
        if state is None:
            h, _ = self.rnn(x)
            if layout.kind == "bidirectional":
                h = h + self.rnn(x.flip(1))[0].flip(1)
            return self.out(h), None
        hx = state.h.to(x.dtype)[None]
        if self.cell == "lstm":
            hx = (hx, state.c.to(x.dtype)[None])
        h, last = self.rnn(x, hx)
        h_last, c_last = last if self.cell == "lstm" else (last, None)
        dtype = state_dtype(x.dtype)
        new_state = RNNState(h_last[0].to(dtype), None if c_last is None else c_last[0].to(dtype))
        return self.out(h), new_state

    def init_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> RNNState:
        weight = self.out.weight
        zeros = torch.zeros(batch_size, self.hidden, device=device or weight.device,
                            dtype=state_dtype(dtype or weight.dtype))
        return RNNState(zeros, zeros.clone() if self.cell == "lstm" else None)

    def state_size(self, seq_len: int) -> int:
        return (2 if self.cell == "lstm" else 1) * self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """The cell's own matmuls (2 · gates · hidden · (d_model + hidden)) plus ~5 element-wise
        ops per gate unit (activations and the state update)."""
        gates = 4 if self.cell == "lstm" else 3
        return gates * self.hidden * (2.0 * (self.d_model + self.hidden) + 5)


@MIXERS.register(
    "mingru",
    description="minGRU: input-gated linear RNN with a log-space parallel scan",
    family="rnn",
    layouts=("causal", "bidirectional"),
    state="fixed",
    options=("expand",),
)
def build_mingru(config: ModelConfig, layer: int, **options: object) -> MinGRU:
    return MinGRU(config.d_model, **options)


@MIXERS.register(
    "lstm",
    description="LSTM (torch fused kernel) with an output projection",
    family="rnn",
    layouts=("causal", "bidirectional"),
    state="fixed",
    options=("expand",),
)
def build_lstm(config: ModelConfig, layer: int, **options: object) -> FusedRNN:
    return FusedRNN(config.d_model, cell="lstm", **options)


@MIXERS.register(
    "gru",
    description="GRU (torch fused kernel) with an output projection",
    family="rnn",
    layouts=("causal", "bidirectional"),
    state="fixed",
    options=("expand",),
)
def build_gru(config: ModelConfig, layer: int, **options: object) -> FusedRNN:
    return FusedRNN(config.d_model, cell="gru", **options)
