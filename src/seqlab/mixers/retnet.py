"""RetNet's multi-scale retention (Sun et al., 2023) on the gated linear attention kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.common import (
    check_bool,
    check_conv_size,
    check_positive,
    group_norm,
    head_dim,
    heads_view,
)
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.attention import apply_rotary, rotary_angles
from seqlab.registry import MIXERS


def retnet_decays(heads: int) -> Tensor:
    """RetNet's fixed per-head decays γ_h = 1 − 2^(−5−h), h = 0 … heads − 1 (float64)."""
    return 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))


@MIXERS.register("retnet")
class RetNet(LinearRecurrence):
    """Multi-scale retention (Sun et al., 2023): RetNet's linear attention with a fixed decay
    per head, a swish output gate and per-head group norm.

    From "Retentive Network":

        S_t = γ_h S_{t−1} + k_t v_tᵀ,  o_t = S_tᵀ q_t / √K       per head h
        y = W_out(swish(W_G x) ⊙ GroupNorm_H(o))

    with fixed decays γ_h = 1 − 2^(−5−h) (a buffer, never trained), passed to the kernel as the
    scalar log decay g = log γ_h. Shapes: q, k `[B, T, H, K]` with K = d_model / heads;
    v `[B, T, H, V]` with V = expand_v · d_model / heads (the paper's 2). GroupNorm has one
    group per head (per-head normalisation, per-channel affine).

    `rotary` rotates q and k by their absolute positions (the rotation part of the paper's
    xPos; its extra exponential scaling is left out, the decay already favours recent tokens),
    so q_t · k_s depends on t − s. Positions are the token indices, continued from the decode
    state's per-row `offset` (the reversed pass of the bidirectional layout numbers its own
    tokens 0 … T − 1); `forward`'s `positions` argument is not used.
    `conv_size` > 0 puts a short causal conv (with SiLU) on q, k and v (fla's
    `use_short_conv`); the decays are all slow (γ ≥ 0.97), and without the conv the 2-layer
    periodic-copy test learns only marginally in its 150 steps. `conv_size: 0` and
    `rotary: false` give the paper's retention without xPos.
    """

    linear_in_values = True
    sequence_parallel = True
    plain_read = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_v: int = 2,
        rotary: bool = True,
        rope_theta: float = 10000.0,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(self.name, expand_v=expand_v)
        check_bool(self.name, rotary=rotary)
        check_conv_size(self.name, conv_size)
        self.state_k = head_dim(self.name, "key", d_model, heads)
        self.state_v = head_dim(self.name, "value", expand_v * d_model, heads)
        if rotary and self.state_k % 2:
            raise ConfigError(f"retnet rotary needs an even key head dim, got {self.state_k}")
        self.rotary, self.rope_theta = rotary, rope_theta
        value_width = heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * d_model + value_width, bias=False)
        self.conv = ShortConv(2 * d_model + value_width, conv_size) if conv_size else None
        self.gate = self.output_gate(value_width)
        self.norm = nn.GroupNorm(heads, value_width)
        self.out = nn.Linear(value_width, d_model, bias=False)
        log_decay = retnet_decays(heads).log().to(torch.get_default_dtype())
        self.register_buffer("log_decay", log_decay, persistent=False)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x),), self.gate(x)

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        features, conv_state = self._features(inputs, state)
        b, t, _ = inputs[0].shape
        o, final, *chunk_states = self._kernel(
            *features, **self._kernel_options(t, state, boundaries, need_final)
        )
        offset = None if state is None or not self.rotary else state.offset + t
        if boundaries is not None:
            starts = None
            if self.rotary:
                starts = state.offset.repeat_interleave(-(-t // boundaries))
                starts = starts + torch.arange(0, t, boundaries, device=o.device).repeat(b)
            return o, self._states_entering_blocks(chunk_states[0], inputs[0], boundaries, starts)
        return o, self._new_state(final, conv_state, offset)

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """q, k (rotated by their positions, continued from `state.offset`), v and the
        log decays g `[B, T, H]`."""
        qkv, conv_state = self._convolve(inputs[0], state)
        b, t, _ = qkv.shape
        q, k, v = qkv.split([self.d_model, self.d_model, self.heads * self.state_v], -1)
        q, k, v = (heads_view(u, self.heads) for u in (q, k, v))
        if self.rotary:
            steps = torch.arange(t, device=qkv.device)
            positions = steps[None] if state is None else state.offset[:, None] + steps
            cos, sin = rotary_angles(positions, self.state_k, self.rope_theta, dtype=q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        g = self.log_decay.to(qkv.dtype).expand(b, t, self.heads)
        return (q, k, v, g), conv_state

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out(F.silu(gate) * group_norm(self.norm, o))

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearState:
        state = super().init_state(batch_size, device=device, dtype=dtype)
        if self.rotary:
            state.offset = torch.zeros(batch_size, dtype=torch.long, device=state.recurrent.device)
        return state

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel, rotary on q and k, group norm and the swish gate."""
        width = self.heads * self.state_v
        return super().mixing_flops(seq_len) + 6.0 * self.d_model + 12.0 * width
