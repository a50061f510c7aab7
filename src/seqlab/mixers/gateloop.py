"""GateLoop (Katsch, 2023): linear attention whose state decays and rotates under a fully
data-controlled complex gate.

The recurrence runs in parallel as a complex diagonal scan (`seqlab.ops.scan.diagonal_scan`)
over the state; `gateloop_scan_loop` is its plain step-by-step reference.
"""

from __future__ import annotations

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
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.common import check_conv_size, fan_in_linear, group_norm, head_dim, heads_view
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.scan import diagonal_scan
from seqlab.registry import MIXERS

__all__ = ["GateLoop", "GateLoopState", "gateloop_decay", "gateloop_scan", "gateloop_scan_loop"]


def gateloop_decay(magnitude_logit: Tensor, phase: Tensor) -> Tensor:
    """a = σ(magnitude_logit) · exp(i · phase), complex, |a| in (0, 1)."""
    return torch.polar(torch.sigmoid(magnitude_logit), phase)


def gateloop_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The GateLoop recurrence, in parallel over time. Per head:

        S_t = diag(a_t) S_{t−1} + k_t v_tᵀ,   o_t = Re(q_tᵀ S_t)

    The state `[B, T, H, K, V]` is scanned as complex numbers, a_t broadcast over V (memory
    O(T·H·K·V): meant for the moderate widths of this library, not a fused kernel).

    Args:
        q, k: real `[B, T, H, K]`; v: real `[B, T, H, V]`.
        a: complex decays `[B, T, H, K]` (|a| <= 1 keeps the scan stable).
        initial_state: S_{−1} complex `[B, H, K, V]`; zeros when None.
        output_final_state: also return S_{T−1}.

    Returns:
        (o `[B, T, H, V]` real, S_{T−1} complex `[B, H, K, V]` or None).
    """
    kv = (k.unsqueeze(-1) * v.unsqueeze(-2)).to(a.dtype)  # [B, T, H, K, V]
    states, final = diagonal_scan(
        a.unsqueeze(-1),
        kv,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
    o = torch.einsum("bthk,bthkv->bthv", q, states.real)
    return o, final


def gateloop_scan_loop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    *,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The reference of `gateloop_scan`: one step at a time. Returns (o, S_{T−1})."""
    batch, steps, heads, key = q.shape
    s = initial_state
    if s is None:
        s = torch.zeros(batch, heads, key, v.shape[-1], dtype=a.dtype, device=a.device)
    outputs = []
    for t in range(steps):
        s = a[:, t, :, :, None] * s + (k[:, t, :, :, None] * v[:, t, :, None, :]).to(a.dtype)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], s.real))
    return torch.stack(outputs, dim=1), s


@dataclass
class GateLoopState:
    """S as real pairs `[B, H, K, V, 2]`, and the short conv's last inputs (None without)."""

    s: Tensor
    conv: Tensor | None


@MIXERS.register("gateloop")
class GateLoop(Mixer):
    """GateLoop (Katsch, 2023): linear attention with a data-controlled complex decay (a
    magnitude gate and a rotation) per key channel.

    From "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling", per head:

        a_t = σ(W_α x_t + b_α) · exp(i (W_θ x_t + b_θ))       (|a_t| in (0, 1), per key)
        S_t = diag(a_t) S_{t−1} + k_t v_tᵀ,   o_t = Re(q_tᵀ S_t)
        y = W_out(SiLU(W_g x) ⊙ GroupNorm_H(o))

    As test-time regression: S_t = Σ_{s<=t} (Π_{r=s+1..t} diag(a_r)) k_s v_sᵀ, the linear-
    attention (unnormalised least-squares) memory of (k_s, v_s) pairs with complex, data-
    controlled forgetting: each key channel fades by |a| and turns by arg a per step.

    Shapes: x `[B, T, d_model]`; q, k, a `[B, T, H, K]` with K = expand_k · d_model / heads;
    v `[B, T, H, V]` with V = expand_v · d_model / heads; S `[B, H, K, V]` complex. Real q, k,
    v with a complex state is the practical form of the author's code (magnitude activation
    sigmoid, identity phase activation); q is scaled by 1/√K. The output block is the
    paper's gated one, with a per-head GroupNorm on o (as in GLA/RetNet) for scale.

    Choices beyond the paper: the magnitude bias b_α starts so σ(b_α) spans 0.5 … 0.99 over
    each head's key channels (multi-scale memory; b_θ starts at 0); the output gate W_g has
    fan-in init N(0, 1/d_model), as in the linear-recurrence mixers; and `conv_size` > 0 puts
    a short causal conv (with SiLU) on q, k and v (0 disables it; without it the 2-layer
    period-3 copy test still falls to 0.006 of its start at lr 3e-3, but not at 1e-2).
    Other layouts (`scan_in_layout`): the same recurrence also scans the reversed sequence
    (or each block of it); the two o are summed before the norm.
    Decode state: S as real pairs `[B, H, K, V, 2]` and the conv's last k − 1 inputs.
    """

    layouts = ALL_LAYOUTS
    linear_in_values = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        conv_size: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ConfigError(f"gateloop heads must be a positive integer, got {heads!r}")
        for option, value in (("expand_k", expand_k), ("expand_v", expand_v)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"gateloop {option} must be a positive number, got {value!r}")
        check_conv_size("gateloop", conv_size)
        self.d_model, self.heads = d_model, heads
        self.state_k = head_dim("gateloop", "key", expand_k * d_model, heads)
        self.state_v = head_dim("gateloop", "value", expand_v * d_model, heads)
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * key_width + value_width, bias=False)
        self.conv = ShortConv(2 * key_width + value_width, conv_size) if conv_size else None
        self.decay = nn.Linear(d_model, 2 * key_width)  # rows: magnitude logits, then phases
        self.gate = fan_in_linear(d_model, value_width)
        self.norm = nn.GroupNorm(heads, value_width)
        self.out = nn.Linear(value_width, d_model, bias=False)
        with torch.no_grad():
            magnitude = torch.linspace(0.5, 0.99, self.state_k, dtype=torch.float64)
            bias = torch.cat([torch.logit(magnitude).repeat(heads), torch.zeros(key_width)])
            self.decay.bias.copy_(bias)
        keep_init(self.decay.bias)

    def forward(
        self,
        x: Tensor,
        state: GateLoopState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, GateLoopState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "gateloop")
        o, new_state = scan_in_layout(
            self._recur, (self.qkv(x), self._decays(x)), state, layout, self.init_state
        )
        o = group_norm(self.norm, o.to(x.dtype))
        return self.out(F.silu(self.gate(x)) * o), new_state

    def _decays(self, x: Tensor) -> Tensor:
        """a `[B, T, H, K]`, complex, in the state dtype."""
        magnitude_logit, phase = self.decay(x).to(state_dtype(x.dtype)).chunk(2, dim=-1)
        return heads_view(gateloop_decay(magnitude_logit, phase), self.heads)

    def _features(
        self, qkv: Tensor, s: GateLoopState | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The conv (from `s.conv`) -> q / √K, k, v in `dtype`, and the conv's new state."""
        conv_state = None
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, None if s is None else s.conv)
        key_width = self.heads * self.state_k
        q, k, v = qkv.to(dtype).split([key_width, key_width, qkv.shape[-1] - 2 * key_width], -1)
        q, k, v = (heads_view(u, self.heads) for u in (q, k, v))
        return q * self.state_k**-0.5, k, v, conv_state

    def _recur(
        self, parts: tuple[Tensor, ...], s: GateLoopState | None
    ) -> tuple[Tensor, GateLoopState | None]:
        qkv, decay = parts
        dtype = decay.real.dtype
        q, k, v, conv_state = self._features(qkv, s, dtype)
        s0 = None if s is None else torch.view_as_complex(s.s.to(dtype).contiguous())
        o, last = gateloop_scan(q, k, v, decay, initial_state=s0, output_final_state=s is not None)
        if s is None:
            return o, None
        return o, GateLoopState(torch.view_as_real(last), conv_state)

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """Values v; the matrix Re(q_tᵀ diag(Π a) k_s) is real, the decays complex."""
        qkv, decay = self.qkv(x), self._decays(x)
        output, _ = self._recur((qkv, decay), None)
        q, k, v, _ = self._features(qkv, None, decay.real.dtype)
        return v, output, lambda values: gateloop_scan_loop(q, k, values, decay)[0]

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> GateLoopState:
        device = device or self.out.weight.device
        dtype = dtype or self.out.weight.dtype
        s = torch.zeros(
            batch_size, self.heads, self.state_k, self.state_v, 2,
            device=device, dtype=state_dtype(dtype),
        )  # fmt: skip
        conv = None
        if self.conv is not None:
            conv = self.conv.init_state(batch_size, device=device, dtype=dtype)
        return GateLoopState(s, conv)

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.conv is None else self.conv.state_size()
        return 2 * self.heads * self.state_k * self.state_v + conv

    def mixing_flops(self, seq_len: int) -> float:
        """Per token: per complex state entry the outer product k vᵀ (1), the scan's complex
        multiply-add (~8) and the real readout q·Re S (2); the decay (sigmoid, polar: ~10 per
        key channel); the conv; the norm and swish gate (~12 per value channel)."""
        key_width, value_width = self.heads * self.state_k, self.heads * self.state_v
        conv = 0.0
        if self.conv is not None:
            conv = 2.0 * self.conv.kernel_size * (2 * key_width + value_width)
        return 11.0 * key_width * self.state_v + 10.0 * key_width + 12.0 * value_width + conv
