"""LightNet (Qin et al., 2024): the additive "scan once" recurrence, a softmax over time of the
keys folded into gated linear attention, on the gated linear attention kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.mixers.base import state_dtype
from seqlab.mixers.common import (
    check_conv_size,
    check_positive,
    fan_in_linear,
    head_dim,
    heads_view,
)
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.registry import MIXERS

NO_TOKEN = float("-inf")  # the normaliser before any token: log Σ over an empty prefix


@dataclass
class LightNetState(LinearState):
    """`LinearState` plus `normalizer`: the running z = logcumsumexp of the key logits per key
    channel `[B, H, K]`, −inf before the first token."""

    normalizer: Tensor | None = None


def lightnet_gate(k: Tensor, z0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Key logits `k [B, T, H, K]` and the normaliser entering them `z0 [B, H, K]` (None: no
    token before, as z0 = −inf) -> (keys exp(k_t − z_t), log decays g_t = z_{t−1} − z_t, the
    normalisers entering every token and the final one, z_{t−1} for t = 1 … T + 1,
    `[B, T + 1, H, K]`), all in k's dtype.

    Where z_{t−1} = −inf (the first token of a sequence) the state entering is zero, so the
    decay is irrelevant and g_t is set to 0: −inf would make the kernel's cumulative decays
    −inf − (−inf) = NaN.
    """
    z = torch.logcumsumexp(k, dim=1)
    if z0 is None:
        z0 = k.new_full((k.shape[0], *k.shape[2:]), NO_TOKEN)
    else:
        z = torch.logaddexp(z0.unsqueeze(1), z)
    entering = torch.cat([z0.unsqueeze(1), z], dim=1)
    previous = entering[:, :-1]
    g = torch.where(previous == NO_TOKEN, torch.zeros_like(z), previous - z)
    return (k - z).exp(), g, entering


def lightnet_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    initial_normalizer: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
    output_chunk_states: bool = False,
) -> tuple[Tensor | None, ...]:
    """The LightNet recurrence (see `LightNet`) on `gated_linear_attention`.

    q, k `[B, T, H, K]` (k: key logits), v `[B, T, H, V]`; `initial_state` S_0 `[B, H, K, V]`
    and `initial_normalizer` z_0 `[B, H, K]` (default zeros and −inf). The normaliser runs in
    the state dtype (float32, or float64 for float64 inputs). Returns (o `[B, T, H, V]`,
    S_T, z_T), the last two None unless `output_final_state`; with `output_chunk_states` also
    the states and normalisers entering every `chunk_size` tokens, `[B, N, H, K, V]` and
    `[B, N, H, K]`. Mode and chunking are the kernel's.
    """
    acc = state_dtype(k.dtype)
    z0 = None if initial_normalizer is None else initial_normalizer.to(acc)
    key, g, entering = lightnet_gate(k.to(acc), z0)
    o, final, *chunk_states = gated_linear_attention(
        q,
        key,
        v,
        g,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        mode=mode,
        chunk_size=chunk_size,
        output_chunk_states=output_chunk_states,
    )
    z_final = entering[:, -1].clone() if output_final_state else None  # no view of the prefix
    if output_chunk_states:
        return o, final, z_final, chunk_states[0], entering[:, :-1:chunk_size]
    return o, final, z_final


def lightnet_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    initial_normalizer: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence token by token, carrying S and z, in the inputs' dtype (the reference):

        z_t = logaddexp(z_{t−1}, k_t)
        S_t = exp(z_{t−1} − z_t) S_{t−1} + exp(k_t − z_t) v_tᵀ,  o_t = scale · S_tᵀ q_t

    Shapes as `lightnet_attention`; returns (o, S_T, z_T).
    """
    batch, steps, heads, dim_k = q.shape
    scale = dim_k**-0.5 if scale is None else scale
    state = initial_state
    if state is None:
        state = q.new_zeros(batch, heads, dim_k, v.shape[-1])
    z = initial_normalizer
    if z is None:
        z = q.new_full((batch, heads, dim_k), NO_TOKEN)
    outputs = []
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), strict=True):
        z_t = torch.logaddexp(z, k_t)
        decay, key = (z - z_t).exp(), (k_t - z_t).exp()
        state = decay.unsqueeze(-1) * state + key.unsqueeze(-1) * v_t.unsqueeze(-2)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, state))
        z = z_t
    o = torch.stack(outputs, dim=1) if outputs else q.new_zeros(batch, 0, heads, v.shape[-1])
    return o, state, z


@MIXERS.register("lightnet")
class LightNet(LinearRecurrence):
    """LightNet (Qin et al., 2024): linear attention whose keys are a softmax over the prefix,
    run in one scan ("scan once") by a running log-sum-exp normaliser per key channel.

    From "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet",
    with z_0 = −inf and S_0 = 0:

        q = SiLU(q'),  z_t = logaddexp(z_{t−1}, k_t) = logcumsumexp_{s≤t} k_s
        S_t = diag(exp(z_{t−1} − z_t)) S_{t−1} + exp(k_t − z_t) v_tᵀ,  o_t = S_tᵀ q_t / √K
        y = W_out(RMSNorm(o) ⊙ swish(W_2 W_1 x))

    Regression view: S_t = Σ_{s≤t} softmax_{s≤t}(k_s) v_sᵀ per key channel, the
    softmax-weighted mean of the values seen so far.

    Shapes: q, k, z `[B, T, H, K]` with K = expand_k · d_model / heads (fla's default makes
    K = d_model / heads); v `[B, T, H, V]` with V = d_model / heads; S `[B, H, K, V]`. The
    decode state carries S, z `[B, H, K]` (−inf before the first token) and the conv's last
    inputs. The first token's decay exp(−inf) multiplies S_0 = 0 and is passed to the kernel
    as g = 0, so the first step is exact: S_1 = v_1ᵀ broadcast over keys (exp(k_1 − z_1) = 1).
    The output RMSNorm spans all heads' values (fla's `g_norm`); the gate is rank
    `gate_rank`.

    Beyond the paper, as fla's `use_short_conv`: `conv_size` > 0 puts a short causal conv
    (no activation) on q', k and v; the default 4 lets the 2-layer periodic-copy test learn
    (the normalised keys carry no position), and 0 disables it. The gate's two projections
    get fan-in init, kept by the model-wide init, so the gate starts at O(1) (see
    `LinearRecurrence`).

    Layouts: every layout, by `scan_in_layout`. The reversed scan is the same recurrence over
    the reversed tokens from z = −inf, so its normaliser is the suffix log-sum-exp; block
    diffusion's start states take S from the kernel's chunk states and z from the normalisers
    entering every block.
    """

    linear_in_values = True
    sequence_parallel_refusal = (
        "its log-sum-exp key normaliser makes every step's decay depend on all earlier keys, "
        "so a shard's gates are not its own"
    )

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 1.0,
        gate_rank: int = 128,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(self.name, gate_rank=gate_rank)
        check_conv_size(self.name, conv_size)
        self.state_k = head_dim(self.name, "key", expand_k * d_model, heads)
        self.state_v = head_dim(self.name, "value", d_model, heads)
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * key_width + value_width, bias=False)
        self.conv = None
        if conv_size:
            self.conv = ShortConv(2 * key_width + value_width, conv_size, activation=None)
        self.gate_down = fan_in_linear(d_model, gate_rank)
        self.gate_up = fan_in_linear(gate_rank, value_width)
        self.norm = nn.RMSNorm(value_width, eps=1e-5)
        self.out = nn.Linear(value_width, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x),), self.gate_up(self.gate_down(x))

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        features, conv_state = self._features(inputs, state)
        options = self._kernel_options(inputs[0].shape[1], state, boundaries, need_final)
        z0 = None if state is None else state.normalizer
        if boundaries is not None:
            o, _, _, chunk_states, z_starts = self._kernel(
                *features, initial_normalizer=z0, **options
            )
            starts = self._states_entering_blocks(chunk_states, inputs[0], boundaries)
            return o, LightNetState(starts.recurrent, starts.conv, None, z_starts.flatten(0, 1))
        o, final, z_final = self._kernel(*features, initial_normalizer=z0, **options)
        if final is None:
            return o, None
        conv = None if conv_state is None else conv_state.to(final.dtype)
        return o, LightNetState(final, conv, None, z_final)

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """SiLU(q'), the key logits k and v."""
        qkv, conv_state = self._convolve(inputs[0], state)
        key_width = self.heads * self.state_k
        q, k, v = qkv.split([key_width, key_width, self.heads * self.state_v], -1)
        return tuple(heads_view(u, self.heads) for u in (F.silu(q), k, v)), conv_state

    def _kernel(
        self, q: Tensor, k: Tensor, v: Tensor, *gates: Tensor, **options: object
    ) -> tuple[Tensor | None, ...]:
        return lightnet_attention(q, k, v, **options)

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out(self.norm(o.flatten(2)) * F.silu(gate))

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LightNetState:
        base = super().init_state(batch_size, device=device, dtype=dtype)
        z = base.recurrent.new_full((batch_size, self.heads, self.state_k), NO_TOKEN)
        return LightNetState(base.recurrent, base.conv, None, z)

    def state_size(self, seq_len: int) -> int:
        """heads · K · V for S, heads · K for the normaliser z, plus the conv's taps − 1
        times its channels."""
        return super().state_size(seq_len) + self.heads * self.state_k

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel and conv, plus per token: the normaliser and its gate (log-add-exp,
        two exps and a subtraction, ~8 per key channel), SiLU on q (~4 per key channel), the
        RMSNorm and swish gate over the values (~8 per value channel); the projections are
        counted with the parameters."""
        keys, values = self.heads * self.state_k, self.heads * self.state_v
        return super().mixing_flops(seq_len) + 12.0 * keys + 8.0 * values


__all__ = ["LightNet", "LightNetState", "lightnet_attention", "lightnet_gate", "lightnet_reference"]
