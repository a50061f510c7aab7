"""The base of seqlab's matrix-state recurrences (linear attention, RetNet, GLA, Mamba-2,
DeltaNet, Gated DeltaNet): the state value, the layouts, the choice of kernel mode, block
diffusion's start states, and the bidirectional form.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import (
    Mixer,
    ValueMap,
    check_input,
    check_scan_layout,
    fold_blocks,
    scan_in_layout,
    state_dtype,
    unfold_blocks,
)
from seqlab.mixers.common import check_positive, fan_in_linear
from seqlab.mixers.memory_cache import MemoryCache
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.sequence_parallel import conv_history, current_shard, shard_entry, shard_scan

KERNEL_MODES = (None, "chunk", "recurrent")


@dataclass
class LinearState:
    """`recurrent`: S `[B, H, K, V]`; `conv`: the short conv's last k − 1 inputs `[B, k − 1, C]`
    (None without a conv); `offset`: the next position of each row `[B]` (None unless the
    mixer rotates q and k by position)."""

    recurrent: Tensor
    conv: Tensor | None = None
    offset: Tensor | None = None


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
    Memory caching: a mixer whose kernel output is a plain read o_t = q̃_tᵀ S_t of the
    (q, k, ...) its `_features` returns declares `plain_read = True` and takes the option
    `memory_cache: {segment, mode, top_k}`, which wraps it in `MemoryCache` (causal only, a
    growing state; see `seqlab.mixers.memory_cache`).
    Sequence parallelism: a subclass whose kernel keeps the value columns independent under a
    key-side transition (the state maps affinely, S ↦ A S + write) declares
    `sequence_parallel = True`; under `seqlab.sequence_parallel.sharded` its forward runs its
    shard through `shard_scan` (conv inputs before the shard from the previous rank, rotary
    offset at the shard's start).
    Init: the base init, except that an output gate `silu(W_g x)` (made by `output_gate`) gets
    fan-in init N(0, 1/d_model), kept by the model-wide init. With the model-wide std (0.02)
    the gate of a small model starts near 0.05 and scales the whole mixer output down, so the
    layer barely moves in a short run; fan-in init starts it at O(1) at any width (and equals
    std 0.02 near d_model 2500).
    """

    name: str = "linear_recurrence"
    layouts = ALL_LAYOUTS
    plain_read: ClassVar[bool] = False

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

    def output_gate(self, width: int) -> nn.Linear:
        """The output gate's projection W_g `d_model -> width`, with fan-in init
        N(0, 1/d_model) that the model-wide init keeps (see the class docstring)."""
        return fan_in_linear(self.d_model, width)

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
        if current_shard() is not None:
            return self._output(self._sharded_recur(inputs, state, layout), gate), None
        o, new_state = scan_in_layout(
            self._recur, inputs, state, layout, self.init_state, self._block_forward
        )
        return self._output(o, gate), new_state

    @abstractmethod
    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """The token-wise input projections: (inputs of `_recur`, each `[B, T, ·]`; gate)."""

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        """One direction: projected inputs -> (kernel output `[B, T, H, V]`, new state):
        `_features` (conv and feature maps), then `_kernel`.

        With `boundaries` = b (and a state), the second element is instead the states entering
        every block of b tokens, stacked as rows r · n + j, taken from the kernel's chunk states
        in the same call (see `_block_forward`). `need_final=False` skips the new state (None).
        """
        features, conv_state = self._features(inputs, state)
        kernel = self._kernel_options(inputs[0].shape[1], state, boundaries, need_final)
        o, final, *chunk_states = self._kernel(*features, **kernel)
        if boundaries is not None:
            return o, self._states_entering_blocks(chunk_states[0], inputs[0], boundaries)
        return o, self._new_state(final, conv_state)

    def _sharded_recur(
        self, inputs: tuple[Tensor, ...], state: LinearState | None, layout: Layout
    ) -> Tensor:
        """This rank's kernel output under sequence parallelism (see the class docstring);
        inputs[0] is the conv's input, as in `_states_entering_blocks`."""
        if not self.sequence_parallel:
            raise SeqlabError(f"{self.name} does not declare sequence_parallel")
        shard = shard_entry(self.name, state, layout)
        x = inputs[0]
        conv = None
        if self.conv is not None:
            conv = conv_history(shard, x, self.conv.kernel_size - 1, self.name)
        offset = torch.full((x.shape[0],), shard.start, dtype=torch.long, device=x.device)
        entry = LinearState(x.new_zeros(()), conv, offset)
        (q, k, v, *gates), _ = self._features(inputs, entry)
        mode = self.kernel_mode or "chunk"
        return shard_scan(
            self._kernel, q, k, v, tuple(gates), self.state_v, mode=mode, chunk_size=self.chunk_size
        )

    @abstractmethod
    def _output(self, o: Tensor, gate: Tensor | None) -> Tensor:
        """Kernel output `[B, T, H, V]` (directions summed) -> `y [B, T, d_model]`."""

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """Projected inputs -> (the kernel's tensor arguments (q, k, v, gates...), the conv's
        new state): the conv and feature maps of `_recur`."""
        raise NotImplementedError(f"{type(self).__name__} has no _features")

    def _kernel(
        self, q: Tensor, k: Tensor, v: Tensor, *gates: Tensor, **options: object
    ) -> tuple[Tensor, ...]:
        """The kernel on `_features`' arguments, with `_kernel_options` (or a `mode`):
        (o `[B, T, H, V]`, final state, chunk states...); `gated_linear_attention` unless a
        subclass has its own."""
        return gated_linear_attention(q, k, v, *gates, **options)

    def _mixed(self, o: Tensor) -> Tensor:
        """The kernel output, completed where the mixer finishes its mixing in `_output`
        (linear attention's normaliser); the identity by default."""
        return o

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """Values v from `_project` and the conv (`_features`), the forward's kernel output,
        and the kernel's recurrent (step-by-step reference) mode as a function of v."""
        inputs, _ = self._project(x)
        output, _ = self._recur(inputs, None)
        (q, k, v, *gates), _ = self._features(inputs, None)

        def value_map(values: Tensor) -> Tensor:
            return self._mixed(self._kernel(q, k, values, *gates, mode="recurrent")[0])

        return v, self._mixed(output), value_map

    def _query_scale(self) -> float:
        """The scale the kernel applies to q (1/√K unless a subclass says otherwise)."""
        return self.state_k**-0.5

    def _read_inputs(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[Tensor, Tensor]:
        """The queries q̃ each token reads the state with, scaled as the kernel scales them
        (the kernel output is o_t = q̃_tᵀ S_t), and the keys k it writes with, both
        `[B, T, H, K]`, from `_recur`'s inputs and state (for `memory_cache`)."""
        (q, k, *_), _ = self._features(inputs, state)
        return q * self._query_scale(), k

    @classmethod
    def takes_memory_cache(cls) -> bool:
        """Whether the mixer reads its state as o_t = q̃_tᵀ S_t, so that `memory_cache`
        (`seqlab.mixers.memory_cache`) applies: its class declares `plain_read`."""
        return cls.plain_read

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        defaults = super().option_defaults()
        if cls.takes_memory_cache():
            defaults["memory_cache"] = None
        return defaults

    @classmethod
    def from_config(cls, config: ModelConfig, layer: int = 0, **options: Any) -> Mixer:
        """The base's, wrapped in `MemoryCache` when the `memory_cache` option is given (a
        mapping of `MemoryCache`'s options: segment, mode, top_k)."""
        cache = options.pop("memory_cache", None) if cls.takes_memory_cache() else None
        mixer = super().from_config(config, layer, **options)
        return mixer if cache is None else MemoryCache.around(mixer, cache)

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
        shape = (batch_size, self.state_heads(), self.state_k, self.state_v)
        conv = self._init_conv_state(batch_size, device, dtype)
        return LinearState(torch.zeros(shape, device=device, dtype=dtype), conv)

    def state_heads(self) -> int:
        """The heads of the matrix state (MoM keeps one set per memory)."""
        return self.heads

    def _init_conv_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> Tensor | None:
        """The conv's state before any token (None without a conv)."""
        if self.conv is None:
            return None
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

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
