"""Linear attention family: linear attention, RetNet retention and gated linear attention.

All three run `ops.linear_attention.gated_linear_attention`, the recurrence
S_t = diag(exp g_t) S_{t−1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t, and differ in the decay g and
in what surrounds the kernel. `LinearRecurrence` holds what every fixed-state matrix recurrence
in seqlab shares (also `mamba2` and the delta-rule mixers): the state value, the layouts, the
choice of kernel mode, and the bidirectional form.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import (
    ALL_LAYOUTS,
    Layout,
    Mixer,
    check_input,
    check_scan_layout,
    fold_blocks,
    scan_in_layout,
    state_dtype,
    unfold_blocks,
)
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.attention import apply_rotary, rotary_angles
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.registry import MIXERS

KERNEL_MODES = (None, "chunk", "recurrent")


@dataclass
class LinearState:
    """`recurrent`: S `[B, H, K, V]`; `conv`: the short conv's last k − 1 inputs `[B, k − 1, C]`
    (None without a conv); `offset`: the next position of each row `[B]` (None unless the
    mixer rotates q and k by position)."""

    recurrent: Tensor
    conv: Tensor | None = None
    offset: Tensor | None = None


def check_positive(name: str, **values: object) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} {key} must be a positive integer, got {value!r}")


def check_bool(name: str, **values: object) -> None:
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} {key} must be true or false, got {value!r}")


def check_conv_size(name: str, conv_size: object) -> None:
    if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
        raise ConfigError(f"{name} conv_size must be an integer >= 0, got {conv_size!r}")


def head_dim(name: str, what: str, width: float, heads: int) -> int:
    """Per-head width `width / heads`, which must be a positive integer."""
    dim = width / heads
    if dim != int(dim) or dim < 1:
        raise ConfigError(f"{name}: {what} width {width:g} does not split into {heads} heads")
    return int(dim)


def heads_view(x: Tensor, heads: int) -> Tensor:
    """`[B, T, H·D]` -> `[B, T, H, D]`."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads))


def group_norm(norm: nn.GroupNorm, o: Tensor) -> Tensor:
    """GroupNorm with one group per head of `o [B, T, H, V]` -> `[B, T, H·V]`."""
    return norm(o.flatten(0, 1).flatten(1)).view(*o.shape[:2], -1)


class LinearRecurrence(Mixer):
    """Base of the matrix-state recurrences (state `[B, H, K, V]` plus an optional conv state).

    Subclasses implement `_project` (token-wise input projections, run once), `_recur` (conv
    and kernel: one direction) and `_output` (norm, gate and output projection of the summed
    directions).

    Kernel mode: the parallel form and prefills (`T > 1`) run the kernel's chunked form, a
    one-token decode step its recurrent form; `kernel_mode` ("chunk" or "recurrent") forces one
    (tests and benchmarks).
    Other layouts (`scan_in_layout`): the same parameters also run over the reversed sequence,
    or each block of it (its own conv and recurrence from a zero state); the two directions'
    kernel outputs are summed before the output norm and gate, the "two scans" view of Hydra
    (Hwang et al., 2024).
    Init: the base init, except that an output gate `silu(W_g x)` gets fan-in init
    N(0, 1/d_model). With the model-wide std (0.02) the gate of a small model starts near 0.05
    and scales the whole mixer output down, so the layer barely moves in a short run; fan-in
    init starts it at O(1) at any width (and equals std 0.02 near d_model 2500).
    """

    name: str = "linear_recurrence"
    layouts = ALL_LAYOUTS

    def __init__(self, d_model: int, heads: int, chunk_size: int) -> None:
        super().__init__()
        check_positive(self.name, heads=heads, chunk_size=chunk_size)
        if chunk_size & (chunk_size - 1):
            raise ConfigError(f"{self.name} chunk_size must be a power of two, got {chunk_size}")
        self.d_model, self.heads, self.chunk_size = d_model, heads, chunk_size
        self.kernel_mode: str | None = None
        self.conv: ShortConv | None = None
        self.gate: nn.Linear | None = None
        self.state_k = self.state_v = 0  # per-head state dims, set by subclasses

    def init_weights(self, std: float, out_std: float) -> None:
        """The base init, then fan-in init N(0, 1/d_model) for the output gate's projection
        (see the class docstring)."""
        super().init_weights(std, out_std)
        if self.gate is not None:
            nn.init.normal_(self.gate.weight, std=self.d_model**-0.5)

    def forward(
        self,
        x: Tensor,
        state: LinearState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LinearState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, self.name)
        inputs, gate = self._project(x)
        o, new_state = scan_in_layout(
            self._recur, inputs, state, layout, self.init_state, self._block_forward
        )
        return self._output(o, gate), new_state

    @abstractmethod
    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """The token-wise input projections: (inputs of `_recur`, each `[B, T, ·]`; gate)."""

    @abstractmethod
    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        """One direction: projected inputs -> (kernel output `[B, T, H, V]`, new state).

        With `boundaries` = b (and a state), the second element is instead the states entering
        every block of b tokens, stacked as rows r · n + j, taken from the kernel's chunk states
        in the same call (see `_block_forward`). `need_final=False` skips the new state (None).
        """

    @abstractmethod
    def _output(self, o: Tensor, gate: Tensor | None) -> Tensor:
        """Kernel output `[B, T, H, V]` (directions summed) -> `y [B, T, d_model]`."""

    # The gated_linear_attention kernel needs power-of-two chunks; the delta rule does not.
    power_of_two_blocks = True

    def _block_forward(
        self, noised: tuple[Tensor, ...], clean: tuple[Tensor, ...], size: int
    ) -> tuple[Tensor, Tensor] | None:
        """Block diffusion's forward scans (see `scan_in_layout`): the clean half in one
        kernel call with chunk = `size`, which also gives the state entering every block (the
        kernel's chunk states; the conv's last inputs before each block), then every noised
        block from its start state as one batch, without final states. None for block sizes
        the kernel cannot chunk by."""
        if self.power_of_two_blocks and size & (size - 1):
            return None
        x = clean[0]
        start = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        clean_output, starts = self._recur(clean, start, boundaries=size)
        blocks = tuple(fold_blocks(u, size) for u in noised)
        noised_output, _ = self._recur(blocks, starts, need_final=False)
        return unfold_blocks(noised_output, x.shape[0]), clean_output

    def _kernel_options(
        self, steps: int, state: LinearState | None, boundaries: int | None, need_final: bool = True
    ) -> dict[str, object]:
        """The kernel's state and mode arguments, for `_recur` with or without `boundaries`."""
        if boundaries is None:
            return {
                "initial_state": None if state is None else state.recurrent,
                "output_final_state": state is not None and need_final,
                "mode": self._mode(steps, state),
                "chunk_size": self.chunk_size,
            }
        return {
            "initial_state": state.recurrent,
            "mode": self.kernel_mode or "chunk",
            "chunk_size": boundaries,
            "output_chunk_states": True,
        }

    def _states_entering_blocks(
        self, chunk_states: Tensor, conv_input: Tensor, size: int, offset: Tensor | None = None
    ) -> LinearState:
        """Chunk states `[B, n, H, K, V]` and the conv input `[B, T, C]` -> the state entering
        each block of `size` tokens, rows r · n + j."""
        conv = None
        if self.conv is not None:
            conv = self.conv.states_at(conv_input, size).flatten(0, 1).to(chunk_states.dtype)
        return LinearState(chunk_states.flatten(0, 1), conv, offset)

    def _mode(self, t: int, state: LinearState | None) -> str:
        if self.kernel_mode not in KERNEL_MODES:
            raise ConfigError(
                f"kernel_mode must be one of {KERNEL_MODES}, got {self.kernel_mode!r}"
            )
        if self.kernel_mode is not None:
            return self.kernel_mode
        return "recurrent" if state is not None and t == 1 else "chunk"

    def _convolve(self, u: Tensor, state: LinearState | None) -> tuple[Tensor, Tensor | None]:
        """The short conv (identity without one), continued from `state.conv` when carried."""
        if self.conv is None:
            return u, None
        return self.conv(u, None if state is None else state.conv.to(u.dtype))

    def _new_state(
        self, recurrent: Tensor | None, conv: Tensor | None = None, offset: Tensor | None = None
    ) -> LinearState | None:
        if recurrent is None:
            return None
        dtype = recurrent.dtype
        return LinearState(recurrent, None if conv is None else conv.to(dtype), offset)

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearState:
        reference = next(self.parameters())
        device = device or reference.device
        dtype = state_dtype(dtype or reference.dtype)
        shape = (batch_size, self.heads, self.state_k, self.state_v)
        conv = None
        if self.conv is not None:
            conv = self.conv.init_state(batch_size, device=device, dtype=dtype)
        return LinearState(torch.zeros(shape, device=device, dtype=dtype), conv)

    def state_size(self, seq_len: int) -> int:
        """heads · K · V for the matrix state, plus (conv taps − 1) · conv channels."""
        conv = 0 if self.conv is None else self.conv.state_size()
        return self.heads * self.state_k * self.state_v + conv

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel, per token and head with chunk C: intra-chunk scores and their
        product with v (2C·K + 2C·V, counting the full C×C tile), the read of the entering
        state (2K·V) and the chunk's write to the state (2K·V); plus the depthwise conv."""
        c = min(self.chunk_size, max(seq_len, 1))
        k, v = self.state_k, self.state_v
        kernel = self.heads * (2.0 * c * (k + v) + 4.0 * k * v)
        conv = 0.0 if self.conv is None else 2.0 * self.conv.kernel_size * self.conv.channels
        return kernel + conv


@MIXERS.register("linear_attention")
class LinearAttention(LinearRecurrence):
    """Linear attention (Katharopoulos et al., "Transformers are RNNs", 2020):

        φ(x) = elu(x) + 1,  S_t = S_{t−1} + φ(k_t) v_tᵀ,  z_t = z_{t−1} + φ(k_t)
        o_t = S_tᵀ φ(q_t) / (z_tᵀ φ(q_t) + ε)     (`normalize`; without it o_t = S_tᵀ φ(q_t)/√K)
        y = W_out o

    Shapes: q, k `[B, T, H, K]`, v `[B, T, H, V]` with K = V = d_model / heads. The normaliser
    rides in the same kernel call as an extra value column of ones, so the state is
    `[B, H, K, V + 1]` (z in the last column). φ > 0 keeps the denominator positive; ε = 1e-6.

    `conv_size` > 0 puts a short causal conv (with SiLU) on q, k and v, fla's
    `use_short_conv`: without decay or positions the paper's layer sees the prefix as a bag of
    tokens, and the conv gives it the local order (with the default 4 the 2-layer periodic-copy
    test learns; `conv_size: 0` is the paper's layer exactly).
    """

    name = "linear_attention"

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        normalize: bool = True,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_bool(self.name, normalize=normalize)
        check_conv_size(self.name, conv_size)
        self.normalize = normalize
        self.state_k = head_dim(self.name, "model", d_model, heads)
        self.state_v = self.state_k + int(normalize)  # z rides in the last value column
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = ShortConv(3 * d_model, conv_size) if conv_size else None
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], None]:
        return (self.qkv(x),), None

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        qkv, conv_state = self._convolve(inputs[0], state)
        q, k, v = (heads_view(u, self.heads) for u in qkv.chunk(3, dim=-1))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        o, final, *chunk_states = gated_linear_attention(
            q,
            k,
            v,
            scale=1.0 if self.normalize else None,
            **self._kernel_options(qkv.shape[1], state, boundaries, need_final),
        )
        if boundaries is not None:
            return o, self._states_entering_blocks(chunk_states[0], inputs[0], boundaries)
        return o, self._new_state(final, conv_state)

    def _output(self, o: Tensor, gate: None) -> Tensor:
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + 1e-6)
        return self.out(o.flatten(2))

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel (normaliser column included) and conv, φ and the division."""
        return super().mixing_flops(seq_len) + 4.0 * self.d_model


def retnet_decays(heads: int) -> Tensor:
    """RetNet's fixed per-head decays γ_h = 1 − 2^(−5−h), h = 0 … heads − 1 (float64)."""
    return 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))


@MIXERS.register("retnet")
class RetNet(LinearRecurrence):
    """Multi-scale retention (Sun et al., "Retentive Network", 2023):

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

    name = "retnet"

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
        self.gate = nn.Linear(d_model, value_width, bias=False)
        self.norm = nn.GroupNorm(heads, value_width)
        self.out = nn.Linear(value_width, d_model, bias=False)
        self.register_buffer("log_decay", torch.empty(heads), persistent=False)
        self._reset_decays()

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self._reset_decays()

    @torch.no_grad()
    def _reset_decays(self) -> None:
        self.log_decay.copy_(retnet_decays(self.heads).log())

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x),), self.gate(x)

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        qkv, conv_state = self._convolve(inputs[0], state)
        b, t, _ = qkv.shape
        q, k, v = qkv.split([self.d_model, self.d_model, self.heads * self.state_v], -1)
        q, k, v = (heads_view(u, self.heads) for u in (q, k, v))
        offset = None
        if self.rotary:
            steps = torch.arange(t, device=qkv.device)
            positions = steps[None] if state is None else state.offset[:, None] + steps
            cos, sin = rotary_angles(positions, self.state_k, self.rope_theta, dtype=q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            offset = None if state is None else positions[:, -1] + 1
        g = self.log_decay.to(qkv.dtype).expand(b, t, self.heads)
        o, final, *chunk_states = gated_linear_attention(
            q, k, v, g, **self._kernel_options(t, state, boundaries, need_final)
        )
        if boundaries is not None:
            starts = None
            if self.rotary:
                starts = state.offset.repeat_interleave(-(-t // boundaries))
                starts = starts + torch.arange(0, t, boundaries, device=qkv.device).repeat(b)
            return o, self._states_entering_blocks(chunk_states[0], inputs[0], boundaries, starts)
        return o, self._new_state(final, conv_state, offset)

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


@MIXERS.register("gla")
class GLA(LinearRecurrence):
    """Gated linear attention (Yang et al., "Gated Linear Attention Transformers with
    Hardware-Efficient Training", 2024):

        α_t = sigmoid(W_2 W_1 x_t + b)^(1/τ),  τ = 16   (rank-16 gate; g_t = logsigmoid(·)/τ)
        S_t = diag(α_t) S_{t−1} + k_t v_tᵀ,  o_t = S_tᵀ q_t / √K
        y = W_out(swish(W_r x) ⊙ GroupNorm_H(o))

    Shapes: q, k, g `[B, T, H, K]` with K = expand_k · d_model / heads (the paper's 0.5);
    v `[B, T, H, V]` with V = expand_v · d_model / heads (1). The normaliser τ keeps the decays
    near 1 and slow to move (a decay of 0.5 needs b ≈ −11). GroupNorm has one group per head.

    Two choices beyond the paper make the layer learn local structure quickly (the paper's
    layer does not learn the 2-layer periodic-copy test in 150 steps): `conv_size` > 0 puts a
    short causal conv (with SiLU) on q, k and v (fla's `use_short_conv`; 0 disables it), and
    the gate bias b is initialised so the zero-input decays σ(b)^(1/τ) span 0.1 … 0.99 over
    each head's key channels, multi-scale as in RetNet, instead of all ≈ 0.96 (b = 0).
    """

    name = "gla"

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(self.name, gate_rank=gate_rank)
        check_conv_size(self.name, conv_size)
        if not gate_normalizer > 0:
            raise ConfigError(f"gla gate_normalizer must be positive, got {gate_normalizer!r}")
        self.state_k = head_dim(self.name, "key", expand_k * d_model, heads)
        self.state_v = head_dim(self.name, "value", expand_v * d_model, heads)
        self.gate_normalizer = gate_normalizer
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * key_width + value_width, bias=False)
        self.conv = ShortConv(2 * key_width + value_width, conv_size) if conv_size else None
        self.decay_down = nn.Linear(d_model, gate_rank, bias=False)
        self.decay_up = nn.Linear(gate_rank, key_width)
        self.gate = nn.Linear(d_model, value_width, bias=False)
        self.norm = nn.GroupNorm(heads, value_width)
        self.out = nn.Linear(value_width, d_model, bias=False)
        self._reset_decays()

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self._reset_decays()

    @torch.no_grad()
    def _reset_decays(self) -> None:
        """Bias b such that the decay at zero input, sigmoid(b)^(1/τ), runs from 0.1 to 0.99
        over each head's key channels (σ(b) = α^τ, b = logit(α^τ))."""
        alpha = torch.linspace(0.1, 0.99, self.state_k, dtype=torch.float64)
        bias = torch.logit((alpha.log() * self.gate_normalizer).exp())
        self.decay_up.bias.copy_(bias.repeat(self.heads))

    def log_decay(self, x: Tensor) -> Tensor:
        """g = logsigmoid(W_2 W_1 x + b) / τ `[B, T, H·K]`, in (−∞, 0)."""
        return F.logsigmoid(self.decay_up(self.decay_down(x))) / self.gate_normalizer

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x), self.log_decay(x)), self.gate(x)

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        qkv_in, g = inputs
        qkv, conv_state = self._convolve(qkv_in, state)
        key_width = self.heads * self.state_k
        q, k, v = qkv.split([key_width, key_width, self.heads * self.state_v], -1)
        q, k, v, g = (heads_view(u, self.heads) for u in (q, k, v, g))
        o, final, *chunk_states = gated_linear_attention(
            q, k, v, g, **self._kernel_options(qkv.shape[1], state, boundaries, need_final)
        )
        if boundaries is not None:
            return o, self._states_entering_blocks(chunk_states[0], qkv_in, boundaries)
        return o, self._new_state(final, conv_state)

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out(F.silu(gate) * group_norm(self.norm, o))

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel and conv, the per-key decay factors on q and k (~8K per token
        and head), the log-sigmoid gate, group norm and the swish gate."""
        width = self.heads * self.state_v
        return super().mixing_flops(seq_len) + 8.0 * self.heads * self.state_k + 12.0 * width

