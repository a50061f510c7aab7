"""A gated exponential moving average: the smallest useful recurrent mixer, as a plugin.

    u = SiLU(conv(W_u x)),  a = σ(λ) ∈ (0, 1) per channel
    h_t = a ⊙ h_{t−1} + (1 − a) ⊙ u_t
    y = W_out(h ⊙ SiLU(W_g x))

Shapes: x `[B, T, d_model]`; u, h `[B, T, d_inner]` with d_inner = expand · d_model. The
decode state is h `[B, d_inner]` and the conv's last k − 1 inputs `[B, k − 1, d_inner]`.

It is a plain `seqlab.mixers.Mixer` subclass: no registration call; its options (`expand`,
`conv_size`) are its keyword parameters; `d_model` comes from the model config. It declares
no layouts, so it is causal only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers import Layout, Mixer
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.scan import diagonal_scan


@dataclass
class EMAState:
    h: Tensor
    conv: Tensor


class EMA(Mixer):
    """Gated exponential moving average with a short conv (an example plugin)."""

    def __init__(self, d_model: int, *, expand: int = 1, conv_size: int = 4) -> None:
        super().__init__()
        if expand < 1 or conv_size < 1:
            raise ConfigError(
                f"ema needs expand >= 1 and conv_size >= 1, got {expand}, {conv_size}"
            )
        self.d_model, self.d_inner = d_model, expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = ShortConv(self.d_inner, conv_size)
        # decays a = σ(λ) spread over 0.5 … 0.99 across channels (multi-scale memory)
        decays = torch.linspace(0.5, 0.99, self.d_inner)
        self.decay_logit = nn.Parameter(torch.logit(decays))
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: EMAState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, EMAState | None]:
        u, gate = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        u, conv_state = self.conv(u, None if state is None else state.conv)
        a = torch.sigmoid(self.decay_logit).to(u.dtype)
        h, last = diagonal_scan(
            a.expand_as(u),
            (1 - a) * u,
            initial_state=None if state is None else state.h.to(u.dtype),
            output_final_state=state is not None,
        )
        y = self.out(h * F.silu(gate))
        return y, None if state is None else EMAState(last, conv_state)

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> EMAState:
        device = device or self.out.weight.device
        dtype = dtype or self.out.weight.dtype
        h = torch.zeros(batch_size, self.d_inner, device=device, dtype=dtype)
        return EMAState(h, self.conv.init_state(batch_size, device=device, dtype=dtype))

    def state_size(self, seq_len: int) -> int:
        return self.d_inner + self.conv.state_size()
