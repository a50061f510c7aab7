"""The block shared by the convolutional (linear time-invariant) state-space mixers, s4d, s4 and
gss: per-channel SSMs with a D skip whose kernel computation is pluggable (a `StateSpace`
module: S4D's diagonal Vandermonde kernel, S4's Cauchy kernel), applied in chunks (causal) or
by FFT (bidirectional), between an in stage and an out stage that each block gives
(`GatedConvSSM`: the projections, GELU and sigmoid gate of s4d and s4; gss its own).

Not a mixer: the registry imports this module with the others and finds nothing to register.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixer, Mixing, check_input, state_dtype
from seqlab.mixers.common import check_positive, check_range
from seqlab.ops.fftconv import fft_conv
from seqlab.ops.scan import diagonal_scan
from seqlab.sequence_parallel import current_shard, shard_entry, shard_state_scan


@dataclass
class SSMState:
    """The SSM state of every channel, `h [B, d_inner, d_state/2, 2]`: d_state/2 complex modes
    stored as real pairs (Re, Im)."""

    h: Tensor


@dataclass
class ChunkMaps:
    """How a chunk of C steps meets the SSM state h `[B, channels, n]` (n modes or states).

    write `[channels, n, C]`: Ā^{C−1−s} B̄, what input s of a chunk leaves in its final state.
    read `[channels, n, C]`: output t of a chunk reads Re(Σ_n read[n, t] h_n) of the state h
    before the chunk (C̄ Ā^{t+1}).
    decay, last: Ā^C and Ā^{tail} (tail = steps in the last chunk), either diagonal
    `[channels, n]` or dense `[channels, n, n]` (row = new state, column = old).
    """

    write: Tensor
    read: Tensor
    decay: Tensor
    last: Tensor


def advance(transition: Tensor, h: Tensor) -> Tensor:
    """Ā h for a diagonal `[channels, n]` or dense `[channels, n, n]` Ā and h `[B, channels, n]`."""
    if transition.dim() == h.dim() - 1:
        return transition * h
    return torch.einsum("dmn,bdn->bdm", transition, h)


class StateSpace(nn.Module):
    """`channels` independent linear time-invariant SSMs, x_k = Ā x_{k−1} + B̄ u_k,
    y_k = C̄ x_k, with the state stored as d_state/2 complex pairs. What `ConvSSM` needs."""

    # `ConvSSM` runs inputs of at most this many steps through `recurrence` rather than the
    # chunked form (0: never, for SSMs whose chunk maps are as cheap as a step).
    recurrent_steps = 0

    @abstractmethod
    def kernel(self, length: int) -> Tensor:
        """K `[length, channels]`, K_l = C̄ Ā^l B̄."""

    @abstractmethod
    def chunk_maps(self, size: int, tail: int) -> ChunkMaps:
        """The maps of a chunk of `size` steps (`tail` steps in the last one)."""

    @abstractmethod
    def transition(self, length: int) -> Tensor:
        """Ā^length on the working state: diagonal `[channels, n]` or dense
        `[channels, n, n]` (as `advance` takes it)."""

    def recurrence(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """The SSM step by step: x_k = Ā x_{k−1} + B̄ u_k, y_k = C̄ x_k from the working state
        `h0 [B, channels, n]` (zero when None), for u `[B, T, channels]`; returns
        (y `[B, T, channels]`, the final working state). Only for `recurrent_steps` > 0."""
        raise NotImplementedError(f"{type(self).__name__} has no step-by-step form")

    @abstractmethod
    def load_state(self, pairs: Tensor) -> Tensor:
        """Stored `[B, channels, d_state/2, 2]` -> the working state `[B, channels, n]`."""

    @abstractmethod
    def store_state(self, h: Tensor) -> Tensor:
        """The inverse of `load_state`."""


class ConvSSM(Mixer):
    """Per-channel `StateSpace` SSMs with a D skip, applied as a long convolution between an in
    stage and an out stage that a subclass gives.

    In stage: u, context = `_ssm_input(x)`; the SSM: y = SSM(u) + D ⊙ u, where
    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s; equivalently the recurrence x_t = Ā x_{t−1} + B̄ u_t,
    SSM(u)_t = C̄ x_t; out stage: `_output(y, context)`. Shapes: x `[B, T, d_model]`,
    u, y `[B, T, d_inner]` (d_inner = `channels`), state d_state real numbers per channel.

    The causal form runs in chunks of `chunk_size` steps: inside a chunk the convolution with
    K_0 … K_{C−1} (a masked Toeplitz product), across chunks the recurrence on the states at
    chunk boundaries (transition Ā^C). It is exactly causal, which an FFT is not (its rounding
    reaches every output), and the same code continues from a carried state (T = 1 decodes).
    The bidirectional layout convolves by FFT (`fft_conv`) with a two-sided kernel whose
    anti-causal half comes from a second, separately parameterised SSM (lags 1 … T, so the
    present is counted once).

    Sequence parallelism: SSM(u) is linear in (u, h_0), so a shard runs `shard_state_scan`
    with T_r = Ā^T (`StateSpace.transition`, diagonal or dense) and `_causal` for both passes.

    A subclass builds `self.ssm` and `self.ssm_reverse` (over `d_inner` channels) and its
    stages after calling `__init__` here.
    """

    layouts = frozenset({LayoutKind.CAUSAL, LayoutKind.BIDIRECTIONAL})
    linear_in_values = True
    sequence_parallel = True
    unused_in_causal = ("ssm_reverse",)

    def __init__(
        self,
        d_model: int,
        *,
        channels: int,
        d_state: int,
        dt_min: float,
        dt_max: float,
        chunk_size: int,
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ConfigError(f"{self.name} d_state must be a positive even number, got {d_state}")
        check_range(self.name, "dt_min", dt_min, "dt_max", dt_max)
        if chunk_size < 1:
            raise ConfigError(f"{self.name} chunk_size must be positive, got {chunk_size}")
        self.d_model, self.d_inner, self.d_state = d_model, channels, d_state
        self.chunk_size = chunk_size
        self.ssm: StateSpace
        self.ssm_reverse: StateSpace
        self.D = nn.Parameter(torch.randn(self.d_inner))

    @abstractmethod
    def _ssm_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The in stage: `x [B, T, d_model]` -> (the SSM input u `[B, T, d_inner]`, what the
        out stage needs besides the SSM output)."""

    @abstractmethod
    def _output(self, y: Tensor, context: Tensor) -> Tensor:
        """The out stage: y = SSM(u) + D ⊙ u `[B, T, d_inner]` -> `[B, T, d_model]`."""

    def forward(
        self,
        x: Tensor,
        state: SSMState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, SSMState | None]:
        check_input(x, self.d_model)
        stateful_bidirectional = state is not None and not layout.is_causal
        if layout.kind not in self.layouts or stateful_bidirectional:
            raise SeqlabError(
                f"{self.name} supports the causal layout (from a state or not) and the "
                f"bidirectional layout (without a state), got {layout.kind!r}"
                + ("" if state is None else " with a state")
            )
        u, context = self._ssm_input(x)
        if current_shard() is not None:
            shard_entry(self.name, state, layout)
            y, new_state = self._sharded_causal(u), None
        elif layout.kind is LayoutKind.BIDIRECTIONAL:
            steps = u.shape[1]
            kernel = torch.stack([self.ssm.kernel(steps), self.ssm_reverse.kernel(steps + 1)[1:]])
            y, new_state = fft_conv(u, kernel, bidirectional=True)[0], None
        elif state is None:
            y, new_state = self._causal(u, None)[0], None
        else:
            h0 = self.ssm.load_state(state.h.to(state_dtype(u.dtype)))
            y, h_last = self._causal(u, h0)
            new_state = SSMState(self.ssm.store_state(h_last))
        return self._output(y + self.D * u, context), new_state

    def _causal(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """SSM(u) `[B, T, d_inner]` from the working state `h0` (zero when None), and the final
        working state `[B, d_inner, n]` when `h0` is given."""
        batch, steps, _ = u.shape
        if steps <= self.ssm.recurrent_steps:
            y, h_last = self.ssm.recurrence(u, h0)
            return y, None if h0 is None else h_last
        size = min(self.chunk_size, steps)
        n_chunks = -(-steps // size)
        chunks = F.pad(u, (0, 0, 0, n_chunks * size - steps)).unflatten(1, (n_chunks, size))
        y = torch.einsum("tsd,bksd->bktd", self._toeplitz(size), chunks)

        carried = h0 is not None
        if not carried and n_chunks == 1:
            return y[:, 0], None
        tail = steps - (n_chunks - 1) * size
        maps = self.ssm.chunk_maps(size, tail)
        if h0 is None:
            h0 = maps.write.new_zeros(batch, *maps.write.shape[:2])
        totals = torch.einsum("bksd,dns->bkdn", chunks.to(maps.write.dtype), maps.write)
        if maps.decay.dim() == 2:
            ends, _ = diagonal_scan(maps.decay, totals, initial_state=h0)
        else:
            h, carried_states = h0, []
            for k in range(n_chunks):
                h = advance(maps.decay, h) + totals[:, k]
                carried_states.append(h)
            ends = torch.stack(carried_states, dim=1)
        starts = torch.cat([h0[:, None], ends[:, :-1]], dim=1)
        from_state = torch.einsum("bkdn,dnt->bktd", starts, maps.read)
        y = (y + from_state.real).flatten(1, 2)[:, :steps]
        if not carried:
            return y, None

        h_last = advance(maps.last, starts[:, -1]) + torch.einsum(
            "bsd,dns->bdn",
            chunks[:, -1, :tail].to(maps.write.dtype),
            maps.write[..., size - tail :],
        )
        return y, h_last

    def _sharded_causal(self, u: Tensor) -> Tensor:
        """SSM(u) of this rank's shard under sequence parallelism."""
        start = self.ssm.load_state(self.init_state(u.shape[0], device=u.device, dtype=u.dtype).h)

        def local() -> tuple[Tensor, Tensor]:
            return self._causal(u, start)  # type: ignore[return-value]

        def response(h0: Tensor) -> tuple[Tensor, Tensor]:
            return self._causal(torch.zeros_like(u), h0)  # type: ignore[return-value]

        return shard_state_scan(local, response, self.ssm.transition(u.shape[1]), advance)

    def _toeplitz(self, size: int) -> Tensor:
        """The causal convolution as a matrix per channel: K_{t−s} for s ≤ t, else 0,
        `[size, size, d_inner]` (t, s, channel)."""
        lag = torch.arange(size, device=self.D.device)
        lag = lag[:, None] - lag[None, :]
        kernel = self.ssm.kernel(size)
        return torch.where((lag >= 0)[..., None], kernel[lag.clamp(min=0)], 0.0)

    def mixing(self, x: Tensor) -> Mixing:
        """Each inner channel is a head whose value is its input u `[B, T, d_inner, 1]`; the
        matrix is the Toeplitz kernel plus D on the diagonal, the same for every sequence
        (LTI), and the output SSM(u) + D ⊙ u, before the out stage."""
        check_input(x, self.d_model)
        u, _ = self._ssm_input(x)
        output = self._causal(u, None)[0] + self.D * u
        steps = u.shape[1]
        skip = torch.diag_embed(self.D[:, None].expand(-1, steps))
        matrix = (self._toeplitz(steps).permute(2, 0, 1) + skip).expand(u.shape[0], -1, -1, -1)
        return Mixing(matrix, u[..., None], output[..., None])

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> SSMState:
        dtype = state_dtype(dtype or self.D.dtype)
        device = device or self.D.device
        return SSMState(
            torch.zeros(batch_size, self.d_inner, self.d_state // 2, 2, device=device, dtype=dtype)
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state


class GatedConvSSM(ConvSSM):
    """The block of s4d and s4 around `ConvSSM`'s SSMs:
    u, z = W_in x; y = W_out(GELU(SSM(u) + D ⊙ u) ⊙ σ(z)), with u, z `[B, T, d_inner]` and
    d_inner = expand · d_model."""

    def __init__(
        self,
        d_model: int,
        *,
        expand: int,
        d_state: int,
        dt_min: float,
        dt_max: float,
        chunk_size: int,
    ) -> None:
        check_positive(self.name, expand=expand)
        ssm_options = {"d_state": d_state, "dt_min": dt_min, "dt_max": dt_max}
        super().__init__(d_model, channels=expand * d_model, chunk_size=chunk_size, **ssm_options)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def _ssm_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        return u, z

    def _output(self, y: Tensor, context: Tensor) -> Tensor:
        return self.out(F.gelu(y) * torch.sigmoid(context))
