"""GateLoop (Katsch, 2023): linear attention whose state decays and rotates under a fully
data-controlled complex gate.

The complex recurrence runs as a real gated linear attention of twice the key width on
phase-rotated queries and keys (`gateloop_attention`, on `ops.gated_linear_attention`'s
chunked kernel); `gateloop_scan_loop` is its plain complex step-by-step reference.
"""

from __future__ import annotations

import math
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
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import (
    conv_history,
    current_shard,
    preceding_sum,
    shard_entry,
    shard_state_scan,
)

__all__ = [
    "GateLoop",
    "GateLoopState",
    "gateloop_attention",
    "gateloop_decay",
    "gateloop_scan_loop",
]


def gateloop_decay(magnitude_logit: Tensor, phase: Tensor) -> Tensor:
    """a = σ(magnitude_logit) · exp(i · phase), complex, |a| in (0, 1)."""
    return torch.polar(torch.sigmoid(magnitude_logit), phase)


def gateloop_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    magnitude_logit: Tensor,
    phase: Tensor,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    initial_phase: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The GateLoop recurrence with a_t = σ(m_t) · exp(i θ_t), per head and key channel:

        S_t = diag(a_t) S_{t−1} + k_t v_tᵀ,   o_t = scale · Re(q_tᵀ S_t)

    computed exactly as a real gated linear attention with key width 2K. With the running
    phase Θ_t = Θ_{−1} + Σ_{r≤t} θ_r and log-magnitude g_t = log σ(m_t),

        S_t = exp(i Θ_t) (C_t − i D_t),   [C_t; D_t] = diag(exp [g_t; g_t]) [C_{t−1}; D_{t−1}]
                                                       + [k_t cos Θ_t; k_t sin Θ_t] v_tᵀ
        Re(q_tᵀ S_t) = [q_t cos Θ_t; q_t sin Θ_t]ᵀ [C_t; D_t]

    so the chunked kernel of GLA runs it (Θ is summed in float64 and wrapped to [0, 2π), which
    keeps cos Θ and sin Θ exact in float32 at any length).

    Args:
        q, k: real `[B, T, H, K]`; v: real `[B, T, H, V]`.
        magnitude_logit, phase: m and θ `[B, T, H, K]`.
        initial_state: [C; D] `[B, H, 2K, V]` before the first token; zeros when None.
        initial_phase: Θ_{−1} `[B, H, K]`; zeros when None.
        output_final_state: also return [C; D] and Θ after the last token.
        mode, chunk_size: as `gated_linear_attention` ("chunk" or "recurrent").

    Returns:
        (o `[B, T, H, V]`, [C; D] `[B, H, 2K, V]` or None, Θ `[B, H, K]` or None).
    """
    start = 0.0 if initial_phase is None else initial_phase.double().unsqueeze(1)
    running = torch.remainder(start + phase.double().cumsum(1), 2 * math.pi).to(phase.dtype)
    cos, sin = running.cos(), running.sin()
    rotated_q = torch.cat([q * cos, q * sin], dim=-1)
    rotated_k = torch.cat([k * cos, k * sin], dim=-1)
    log_magnitude = F.logsigmoid(magnitude_logit)
    o, final = gated_linear_attention(
        rotated_q,
        rotated_k,
        v,
        torch.cat([log_magnitude, log_magnitude], dim=-1),
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        mode=mode,
        chunk_size=chunk_size,
    )
    return o, final, (running[:, -1].clone() if output_final_state else None)


def gateloop_scan_loop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    *,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The complex reference of `gateloop_attention`, one step at a time:
    S_t = diag(a_t) S_{t−1} + k_t v_tᵀ, o_t = Re(q_tᵀ S_t), for q, k `[B, T, H, K]`, v
    `[B, T, H, V]`, complex a `[B, T, H, K]` and S complex `[B, H, K, V]`. Returns (o, S_{T−1})."""
    batch, steps, heads, key = q.shape
    s = initial_state
    if s is None:
        s = torch.zeros(batch, heads, key, v.shape[-1], dtype=a.dtype, device=a.device)
    outputs = []
    for t in range(steps):
        s = a[:, t, :, :, None] * s + (k[:, t, :, :, None] * v[:, t, :, None, :]).to(a.dtype)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], s.real))
    return torch.stack(outputs, dim=1), s


def complex_state(rotated: Tensor, running_phase: Tensor) -> Tensor:
    """S = exp(i Θ) (C − i D) `[B, H, K, V]` complex from [C; D] `[B, H, 2K, V]` and Θ
    `[B, H, K]` (the state `gateloop_attention` carries, read as GateLoop's complex S)."""
    c, d = rotated.chunk(2, dim=-2)
    return torch.polar(torch.ones_like(running_phase), running_phase)[..., None] * torch.complex(
        c, -d
    )


@dataclass
class GateLoopState:
    """`s`: S in the rotated frame [C; D] `[B, H, 2K, V]` and `phase`: the running phase Θ
    `[B, H, K]` (see `gateloop_attention`; `complex_state` reads them as the complex S);
    `conv`: the short conv's last inputs (None without)."""

    s: Tensor
    phase: Tensor
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
    Kernel: the chunked gated linear attention of `gateloop_attention` (chunks of
    `chunk_size`, a power of two) for the parallel form and prefills, its recurrent form for a
    one-token step.
    Decode state: S in the rotated real frame [C; D] `[B, H, 2K, V]`, the running phase
    `[B, H, K]` and the conv's last k − 1 inputs.
    Sequence parallelism: the running phase of a shard starts from the earlier ranks' phase
    sums (`preceding_sum`, mod 2π); then the rotated frame is a real diagonal scan, run by
    `shard_state_scan` with T_r = exp(Σ_t [g_t; g_t]) and the zero-input response from S_in as
    a second pass of the kernel (v = 0); the conv takes its history from the previous rank.
    """

    layouts = ALL_LAYOUTS
    linear_in_values = True
    sequence_parallel = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ConfigError(f"gateloop heads must be a positive integer, got {heads!r}")
        for option, value in (("expand_k", expand_k), ("expand_v", expand_v)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"gateloop {option} must be a positive number, got {value!r}")
        check_conv_size("gateloop", conv_size)
        if isinstance(chunk_size, bool) or chunk_size < 1 or chunk_size & (chunk_size - 1):
            raise ConfigError(f"gateloop chunk_size must be a power of two, got {chunk_size!r}")
        self.chunk_size = chunk_size
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
        parts = (self.qkv(x), self.decay(x))
        if current_shard() is not None:
            o, new_state = self._sharded(parts, state, layout), None
        else:
            o, new_state = scan_in_layout(self._recur, parts, state, layout, self.init_state)
        o = group_norm(self.norm, o.to(x.dtype))
        return self.out(F.silu(self.gate(x)) * o), new_state

    def _features(
        self, qkv: Tensor, decay: Tensor, s: GateLoopState | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The conv (from `s.conv`) -> q / √K, k, v and the decay's magnitude logits and
        phases `[B, T, H, K]`, all in the state dtype, and the conv's new state."""
        dtype = state_dtype(qkv.dtype)
        conv_state = None
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, None if s is None else s.conv)
        key_width = self.heads * self.state_k
        q, k, v = qkv.to(dtype).split([key_width, key_width, qkv.shape[-1] - 2 * key_width], -1)
        magnitude_logit, phase = decay.to(dtype).chunk(2, dim=-1)
        q, k, v, magnitude_logit, phase = (
            heads_view(u, self.heads) for u in (q, k, v, magnitude_logit, phase)
        )
        return q * self.state_k**-0.5, k, v, magnitude_logit, phase, conv_state

    def _recur(
        self, parts: tuple[Tensor, ...], s: GateLoopState | None
    ) -> tuple[Tensor, GateLoopState | None]:
        q, k, v, magnitude_logit, phase, conv_state = self._features(*parts, s)
        o, last, last_phase = gateloop_attention(
            q, k, v, magnitude_logit, phase,
            initial_state=None if s is None else s.s.to(q.dtype),
            initial_phase=None if s is None else s.phase.to(q.dtype),
            output_final_state=s is not None,
            mode="recurrent" if s is not None and q.shape[1] == 1 else "chunk",
            chunk_size=self.chunk_size,
        )  # fmt: skip
        if s is None:
            return o, None
        return o, GateLoopState(last, last_phase, conv_state)

    def _sharded(
        self, parts: tuple[Tensor, Tensor], state: GateLoopState | None, layout: Layout
    ) -> Tensor:
        """This rank's o under sequence parallelism (see the class docstring)."""
        shard = shard_entry(self.name, state, layout)
        qkv, decay = parts
        history = None
        if self.conv is not None:
            history = conv_history(shard, qkv, self.conv.kernel_size - 1, self.name)
        entry = GateLoopState(qkv.new_zeros(()), qkv.new_zeros(()), history)
        q, k, v, magnitude_logit, phase, _ = self._features(qkv, decay, entry)
        start = torch.remainder(preceding_sum(shard, phase.double().sum(1)), 2 * math.pi)
        options = {"initial_phase": start, "chunk_size": self.chunk_size}

        def local() -> tuple[Tensor, Tensor]:
            o, written, _ = gateloop_attention(
                q, k, v, magnitude_logit, phase, output_final_state=True, **options
            )
            return o, written

        def response(entering: Tensor) -> tuple[Tensor, Tensor]:
            o, final, _ = gateloop_attention(
                q, k, torch.zeros_like(v), magnitude_logit, phase,
                initial_state=entering, output_final_state=True, **options,
            )  # fmt: skip
            return o, final

        log_magnitude = F.logsigmoid(magnitude_logit).sum(1)  # [B, H, K]
        transition = torch.cat([log_magnitude, log_magnitude], dim=-1).exp()[..., None]
        return shard_state_scan(local, response, transition)

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """Values v; the matrix Re(q_tᵀ diag(Π a) k_s) is real, the decays complex; the
        complex step loop is the reference."""
        qkv, decay = self.qkv(x), self.decay(x)
        output, _ = self._recur((qkv, decay), None)
        q, k, v, magnitude_logit, phase, _ = self._features(qkv, decay, None)
        a = gateloop_decay(magnitude_logit, phase)
        return v, output, lambda values: gateloop_scan_loop(q, k, values, a)[0]

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> GateLoopState:
        device = device or self.out.weight.device
        dtype = dtype or self.out.weight.dtype
        dtype = state_dtype(dtype)
        s = torch.zeros(
            batch_size, self.heads, 2 * self.state_k, self.state_v, device=device, dtype=dtype
        )
        phase = torch.zeros(batch_size, self.heads, self.state_k, device=device, dtype=dtype)
        conv = None
        if self.conv is not None:
            conv = self.conv.init_state(batch_size, device=device, dtype=dtype)
        return GateLoopState(s, phase, conv)

    def state_size(self, seq_len: int) -> int:
        """2 · heads · K · V for [C; D] (the complex S), heads · K running phases, the conv."""
        conv = 0 if self.conv is None else self.conv.state_size()
        return self.heads * self.state_k * (2 * self.state_v + 1) + conv

    def mixing_flops(self, seq_len: int) -> float:
        """Per token: the chunked gated linear attention of key width 2K, chunk C (intra-chunk
        scores and their product with v, 2C·(2K + V) over the full C×C tile; the read of the
        entering state and the chunk's write, 8K·V); the rotation and decay (sin, cos,
        logsigmoid, products: ~12 per key channel); the conv; the norm and swish gate (~12 per
        value channel)."""
        key_width, value_width = self.heads * self.state_k, self.heads * self.state_v
        c = min(self.chunk_size, max(seq_len, 1))
        kernel = 2.0 * c * (2 * key_width + value_width) + 8.0 * key_width * self.state_v
        conv = 0.0
        if self.conv is not None:
            conv = 2.0 * self.conv.kernel_size * (2 * key_width + value_width)
        return kernel + 12.0 * key_width + 12.0 * value_width + conv
