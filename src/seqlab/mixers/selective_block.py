"""Mamba's block around a selective diagonal scan, shared by `mamba` and `longhorn`:

    u, z = W_in x;  u = SiLU(conv(u));  (δ, B, C) = W_x u
    y = W_out(scan(u; δ, B, C, D) ⊙ SiLU(z))

Shapes: x `[B, T, d_model]`; u, z `[B, T, d_inner]` (d_inner = expand · d_model); δ
`[B, T, dt_rank]`; B, C `[B, T, d_state]`; the scan's state h `[B, d_inner, d_state]`. A
subclass adds its own parameters (Mamba's Δ projection and A, Longhorn's β projection) and
gives the scan (`_scan`). Init: W_in, W_x and W_out keep PyTorch's U(±fan_in^−½), W_out
scaled by 1/√(2 n_layers) (the residual rescaling, out_std / std of `Model.init_weights`),
all kept by the model-wide init; D = 1, not weight-decayed; the conv bias starts at 0.
Other layouts (`scan_in_layout`): the same conv and scan also run over the reversed sequence
(or each block of it), summed before the gate (each with its own D skip).
Sequence parallelism: the scan is linear in (u, h_0) given (δ, B, C), so a shard runs
`shard_state_scan` (the conv's history from the previous rank; T_r from `_shard_transition`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import (
    Mixer,
    ValueMap,
    check_input,
    check_scan_layout,
    keep_init,
    no_weight_decay,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.common import check_positive
from seqlab.mixers.short_conv import ShortConv
from seqlab.sequence_parallel import conv_history, current_shard, shard_entry, shard_state_scan


@dataclass
class SelectiveState:
    """`conv`: the last conv_size − 1 conv inputs `[B, conv_size − 1, d_inner]`;
    `ssm`: h `[B, d_inner, d_state]`."""

    conv: Tensor
    ssm: Tensor


class SelectiveBlock(Mixer):
    """The shared block (see the module docstring). A subclass's constructor calls
    `super().__init__`, builds its own parameters, then `_build_output(n_layers)`, so that
    parameters are drawn in the block's order."""

    name = "selective_block"  # the registry names each registered subclass
    layouts = ALL_LAYOUTS
    linear_in_values = True
    sequence_parallel = True

    def __init__(
        self, d_model: int, *, expand: int, d_state: int, conv_size: int, dt_rank: int | str
    ) -> None:
        super().__init__()
        check_positive(self.name, expand=expand, d_state=d_state, conv_size=conv_size)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ConfigError(
                f"{self.name} dt_rank must be 'auto' or a positive integer, got {dt_rank!r}"
            )
        self.d_model, self.d_inner, self.d_state = d_model, expand * d_model, d_state
        self.dt_rank = dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = ShortConv(self.d_inner, conv_size, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)

    def _build_output(self, n_layers: int) -> None:
        """D and W_out, after the subclass's own parameters."""
        check_positive(self.name, n_layers=n_layers)
        self.D = nn.Parameter(torch.ones(self.d_inner))
        no_weight_decay(self.D)
        self.out = nn.Linear(self.d_inner, self.d_model, bias=False)
        with torch.no_grad():
            self.out.weight.mul_((2 * n_layers) ** -0.5)
        keep_init(self.in_proj.weight, self.x_proj.weight, self.out.weight)

    @abstractmethod
    def _scan(
        self,
        u: Tensor,
        delta: Tensor,
        B: Tensor,
        C: Tensor,
        initial_state: Tensor | None,
        output_final_state: bool,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The scan in the state dtype: u `[B, T, d_inner]`, δ `[B, T, dt_rank]`, B and C
        `[B, T, d_state]` -> (y `[B, T, d_inner]` with the D skip, h_{T−1} or None);
        `reference`: its step-by-step reference."""

    def forward(
        self,
        x: Tensor,
        state: SelectiveState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, SelectiveState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, self.name)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if current_shard() is not None:
            return self.out(self._sharded_scan(u, state, layout) * F.silu(z)), None
        y, new_state = scan_in_layout(
            lambda inputs, s: self._conv_and_scan(*inputs, s), (u,), state, layout, self.init_state
        )
        return self.out(y * F.silu(z)), new_state

    def _conv_and_scan(
        self, u: Tensor, state: SelectiveState | None
    ) -> tuple[Tensor, SelectiveState | None]:
        """SiLU(conv(u)) then the scan, in float32 (float64 for float64 inputs)."""
        u, delta, B, C, conv_state = self._scan_inputs(u, state)
        dtype = B.dtype
        y, h_last = self._scan(
            u.to(dtype),
            delta,
            B,
            C,
            None if state is None else state.ssm.to(dtype),
            state is not None,
        )
        new_state = None if state is None else SelectiveState(conv_state.to(dtype), h_last)
        return y.to(u.dtype), new_state

    def _sharded_scan(self, u: Tensor, state: SelectiveState | None, layout: Layout) -> Tensor:
        """SiLU(conv(u)) then the scan of this rank's shard under sequence parallelism."""
        shard = shard_entry(self.name, state, layout)
        history = conv_history(shard, u, self.conv.kernel_size - 1, self.name)
        u, delta, B, C, _ = self._scan_inputs(u, SelectiveState(history, history.new_zeros(())))
        inputs = u.to(B.dtype)

        def local() -> tuple[Tensor, Tensor]:
            return self._scan(inputs, delta, B, C, None, True)  # type: ignore[return-value]

        def response(start: Tensor) -> tuple[Tensor, Tensor]:
            zero = torch.zeros_like(inputs)
            return self._scan(zero, delta, B, C, start, True)  # type: ignore[return-value]

        y = shard_state_scan(local, response, self._shard_transition(delta))
        return y.to(u.dtype)

    def _shard_transition(self, delta: Tensor) -> Tensor | None:
        """Π_t a_t `[B, d_inner, d_state]` over a shard in closed form, or None (the scan's
        zero-input response from the all-ones state)."""
        return None

    def _scan_inputs(
        self, u: Tensor, state: SelectiveState | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """SiLU(conv(u)) `[B, T, d_inner]`, δ, and B and C in the state dtype, and the conv's
        new state."""
        u, conv_state = self.conv(u, None if state is None else state.conv)
        delta, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dtype = state_dtype(u.dtype)
        return u, delta, B.to(dtype), C.to(dtype), conv_state

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """Each inner channel is a head with one value, the scan input u (after the conv):
        values `[B, T, d_inner, 1]`; the matrix holds Δ, B, C, the decays and the D skip
        (on the diagonal). The reference scan runs the V' values of each channel as V' rows."""
        u, _ = self.in_proj(x).chunk(2, dim=-1)
        output, _ = self._conv_and_scan(u, None)
        u, delta, B, C, _ = self._scan_inputs(u, None)

        def value_map(values: Tensor) -> Tensor:
            batch, count = values.shape[0], values.shape[-1]
            rows = values.to(B.dtype).permute(0, 3, 1, 2).flatten(0, 1)  # [B · V', T, d_inner]
            gates = (g.repeat_interleave(count, dim=0) for g in (delta, B, C))
            y, _ = self._scan(rows, *gates, None, False, reference=True)
            return y.unflatten(0, (batch, count)).permute(0, 2, 3, 1)

        return u[..., None], output[..., None], value_map

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> SelectiveState:
        device = device or self.D.device
        dtype = state_dtype(dtype or self.D.dtype)
        return SelectiveState(
            self.conv.init_state(batch_size, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state + self.conv.state_size()
