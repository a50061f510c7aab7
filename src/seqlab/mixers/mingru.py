"""minGRU (Feng et al., 2024) behind a short causal conv, as a log-space parallel scan."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import (
    Mixer,
    ValueMap,
    check_input,
    check_scan_layout,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.common import check_conv_size, check_positive
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.scan import diagonal_scan, log_space_scan
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import conv_history, current_shard, shard_entry, shard_state_scan


def log_g(x: Tensor) -> Tensor:
    """log g(x) for minGRU's positive activation g(x) = x + 1/2 (x ≥ 0), σ(x) (x < 0)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


@dataclass
class MinGRUState:
    """The hidden state `h [B, hidden]`, positive (zero before the first token), and the
    short conv's last conv_size − 1 inputs `[B, conv_size − 1, d_model]` (None without a
    conv)."""

    h: Tensor
    conv: Tensor | None = None


@MIXERS.register("mingru")
class MinGRU(Mixer):
    """minGRU (Feng et al., 2024): a GRU whose gates read only the input, run as a parallel
    scan in log space, behind a short causal conv.

    The cell of "Were RNNs All We Needed?", behind the conv:
    x̃ = conv(x) (depthwise, `conv_size` taps; identity when conv_size = 0), then
    z_t = σ(W_z x̃_t + b_z), h̃_t = g(W_h x̃_t + b_h), h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,
    y_t = W_out h_t, with g(v) = v + 1/2 (v ≥ 0), σ(v) (v < 0) so that h stays positive.
    The gates read only the input, so the recurrence is linear in h and runs as a parallel
    scan in log space: log(1 − z_t) = −softplus(k_t), log z_t = −softplus(−k_t), log g(·).
    Shapes: x `[B, T, d_model]`, h `[B, T, hidden]` with hidden = expand · d_model.

    The conv is not in the paper (conv_size = 0 gives its cell exactly). A minGRU channel is a
    positive moving average, so reading "the token k steps back" needs differences of
    averages with large weights; the conv gives each gate the last few tokens directly, as
    in Mamba's and Griffin's recurrent blocks.
    Other layouts (`scan_in_layout`): the same conv and cell also run over the reversed
    sequence (or each block of it); the directions are summed before the output projection.
    Sequence parallelism (`shard_state_scan`): the conv's history from the previous rank,
    T_r = Π_t (1 − z_t) and the zero-input response h_t = Π_{s≤t} (1 − z_s) ⊙ S_in from the
    cumulative log-decays.
    """

    layouts = ALL_LAYOUTS
    linear_in_values = True
    sequence_parallel = True

    def __init__(self, d_model: int, *, expand: int = 1, conv_size: int = 4) -> None:
        super().__init__()
        check_positive("mingru", expand=expand)
        check_conv_size("mingru", conv_size)
        self.d_model, self.hidden = d_model, expand * d_model
        self.conv = ShortConv(d_model, conv_size, activation=None) if conv_size else None
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
        if current_shard() is not None:
            return self.out(self._sharded_recur(x, state, layout).to(x.dtype)), None
        h, new_state = scan_in_layout(
            lambda inputs, s: self._recur(*inputs, s), (x,), state, layout, self.init_state
        )
        return self.out(h.to(x.dtype)), new_state

    def _recur(self, x: Tensor, state: MinGRUState | None) -> tuple[Tensor, MinGRUState | None]:
        """h `[B, T, hidden]` (float32, or float64 for float64 inputs) and the new state."""
        k, pre, conv_state = self._gates(x, state)
        log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(pre)
        if state is None:
            return log_space_scan(log_a, log_b)[0], None
        h, log_h_last = log_space_scan(
            log_a, log_b, initial_log_state=state.h.to(k.dtype).log(), output_final_state=True
        )
        return h, MinGRUState(
            log_h_last.exp(), None if conv_state is None else conv_state.to(k.dtype)
        )

    def _sharded_recur(self, x: Tensor, state: MinGRUState | None, layout: Layout) -> Tensor:
        """h `[B, T, hidden]` of this rank's shard under sequence parallelism."""
        shard = shard_entry(self.name, state, layout)
        entry = None
        if self.conv is not None:
            history = conv_history(shard, x, self.conv.kernel_size - 1, self.name)
            entry = MinGRUState(history.new_zeros(()), history)
        k, pre, _ = self._gates(x, entry)
        log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(pre)
        decays = log_a.cumsum(1).exp()  # Π_{s≤t} (1 − z_s)

        def local() -> tuple[Tensor, Tensor]:
            h = log_space_scan(log_a, log_b)[0]
            return h, h[:, -1]

        def response(start: Tensor) -> tuple[Tensor, Tensor]:
            h = decays * start[:, None]
            return h, h[:, -1]

        return shard_state_scan(local, response, decays[:, -1])

    def _gates(self, x: Tensor, state: MinGRUState | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The conv (from `state.conv`), then the gate logits k and candidate pre-activations
        `[B, T, hidden]` in the state dtype, and the conv's new state."""
        conv_state = None
        if self.conv is not None:
            x, conv_state = self.conv(x, None if state is None else state.conv)
        k, pre = self.proj(x).to(state_dtype(x.dtype)).chunk(2, dim=-1)
        return k, pre, conv_state

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """Each hidden unit is a head whose value is its candidate h̃ = g(W_h x̃)
        `[B, T, hidden, 1]`: h_t = Σ_s z_s Π_{s<r≤t} (1 − z_r) h̃_s, with the gates z
        from the input alone. The reference is the scan's loop over time."""
        h, _ = self._recur(x, None)
        k, pre, _ = self._gates(x, None)
        z = torch.sigmoid(k)[..., None]

        def value_map(values: Tensor) -> Tensor:
            return diagonal_scan(1 - z, z * values, mode="recurrent")[0]

        return log_g(pre).exp()[..., None], h[..., None], value_map

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
        cumsum, logcumsumexp and logaddexp (~8); plus the conv's 2 · conv_size per input channel."""
        conv = 0 if self.conv is None else 2.0 * self.conv.kernel_size * self.d_model
        return 20.0 * self.hidden + conv
