"""LSTM and GRU on torch's fused kernels, sharing `FusedRNN`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import Mixer, check_input, check_scan_layout, scan_in_layout, state_dtype
from seqlab.mixers.common import check_positive
from seqlab.registry import MIXERS


@dataclass
class RNNState:
    """The hidden state `h [B, hidden]` and, for the LSTM, the cell `c [B, hidden]`."""

    h: Tensor
    c: Tensor | None = None

    @classmethod
    def zeros(
        cls, batch_size: int, hidden: int, *, cell: bool, like: Tensor, device, dtype
    ) -> RNNState:
        """A zero state (with a zero cell when `cell`), on `device` and in the state dtype of
        `dtype`, each defaulting to those of the weight `like`."""
        zeros = torch.zeros(
            batch_size,
            hidden,
            device=device or like.device,
            dtype=state_dtype(dtype or like.dtype),
        )
        return cls(zeros, zeros.clone() if cell else None)


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
        check_positive(cell, expand=expand)
        self.cell, self.d_model, self.hidden = cell, d_model, expand * d_model
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_class(d_model, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, d_model, bias=False)
        if cell == "lstm":
            forget = slice(self.hidden, 2 * self.hidden)
            with torch.no_grad():
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
        lstm = self.cell == "lstm"
        return RNNState.zeros(
            batch_size, self.hidden, cell=lstm, like=self.out.weight, device=device, dtype=dtype
        )

    def state_size(self, seq_len: int) -> int:
        return (2 if self.cell == "lstm" else 1) * self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """The cell's own matmuls (2 · gates · hidden · (d_model + hidden)) plus ~5 element-wise
        ops per gate unit (activations and the state update)."""
        gates = 4 if self.cell == "lstm" else 3
        return gates * self.hidden * (2.0 * (self.d_model + self.hidden) + 5)


@MIXERS.register("lstm")
class LSTM(FusedRNN):
    """LSTM (Hochreiter & Schmidhuber, 1997) on torch's fused kernel, with an output
    projection and the forget-gate bias starting at 1.

    See `FusedRNN`.
    """

    def __init__(self, d_model: int, *, expand: int = 1) -> None:
        super().__init__(d_model, cell="lstm", expand=expand)


@MIXERS.register("gru")
class GRU(FusedRNN):
    """GRU (Cho et al., 2014) on torch's fused kernel, with an output projection.

    See `FusedRNN`.
    """

    def __init__(self, d_model: int, *, expand: int = 1) -> None:
        super().__init__(d_model, cell="gru", expand=expand)
