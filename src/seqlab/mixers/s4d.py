"""S4D: a diagonal state-space model per channel, applied as a long convolution.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State Space
Models" (2022). Each channel holds a complex diagonal SSM whose convolution kernel is a
Vandermonde product. The causal form convolves inside chunks and carries the SSM state across
them (exactly causal, and the same code decodes); the bidirectional form uses `fft_conv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixer, Mixing, check_input, no_weight_decay, state_dtype
from seqlab.mixers.common import check_positive, check_range, log_uniform_log_dt
from seqlab.ops.fftconv import fft_conv
from seqlab.ops.scan import diagonal_scan
from seqlab.registry import MIXERS

S4D_INITS = ("lin", "inv")


@dataclass
class S4DState:
    """The complex SSM state stored as real pairs, `h [B, d_inner, d_state/2, 2]`."""

    h: Tensor


class DiagonalSSM(nn.Module):
    """`channels` independent SSMs, each with `d_state / 2` complex modes (conjugate pairs).

    Continuous: x'(t) = A x(t) + B u(t), y(t) = 2 Re(C x(t)) with
    A_n = −exp(log_A_real_n) + i A_imag_n (real part always negative).
    ZOH with step Δ = exp(log_dt): Ā = exp(ΔA), B̄ = (Ā − 1) / A · B.

    Initialisation (N = d_state, n = 0 … N/2 − 1): Re A_n = −1/2 and
    S4D-Lin: Im A_n = π n; S4D-Inv: Im A_n = (N / π) (N / (2n + 1) − 1);
    B_n = 1, C_n ~ CN(0, 1), log Δ ~ U[log dt_min, log dt_max].
    Complex parameters are stored as real pairs `[..., 2]` so dtype casts keep them whole.
    """

    def __init__(
        self, channels: int, d_state: int, *, init: str, dt_min: float, dt_max: float
    ) -> None:
        super().__init__()
        self.d_state, self.init, self.dt_min, self.dt_max = d_state, init, dt_min, dt_max
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_A_real = nn.Parameter(torch.empty(channels, modes))
        self.A_imag = nn.Parameter(torch.empty(channels, modes))
        self.B = nn.Parameter(torch.empty(channels, modes, 2))
        self.C = nn.Parameter(torch.empty(channels, modes, 2))
        no_weight_decay(self.log_dt, self.log_A_real, self.A_imag)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n = torch.arange(self.d_state // 2, dtype=torch.float64)
        if self.init == "lin":
            imag = math.pi * n
        else:
            imag = (self.d_state / math.pi) * (self.d_state / (2 * n + 1) - 1)
        self.log_A_real.fill_(math.log(0.5))
        self.A_imag.copy_(imag.expand_as(self.A_imag))
        self.log_dt.copy_(log_uniform_log_dt(self.log_dt.shape, self.dt_min, self.dt_max))
        self.B.zero_()
        self.B[..., 0] = 1.0
        self.C.normal_(std=math.sqrt(0.5))

    def eigenvalues(self) -> Tensor:
        """The continuous-time diagonal A `[channels, d_state/2]`, complex."""
        return torch.complex(-self.log_A_real.exp(), self.A_imag)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """(ΔA, B̄, C), each `[channels, d_state/2]` complex; Ā = exp(ΔA)."""
        a = self.eigenvalues()
        dt_a = self.log_dt.exp()[:, None] * a
        b_bar = torch.expm1(dt_a) / a * torch.view_as_complex(self.B)
        return dt_a, b_bar, torch.view_as_complex(self.C)

    def kernel(self, length: int) -> Tensor:
        """K `[length, channels]`, K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l) (a Vandermonde product)."""
        dt_a, b_bar, c = self.discretize()
        lags = torch.arange(length, device=dt_a.device, dtype=self.log_dt.dtype)
        vandermonde = torch.exp(dt_a[..., None] * lags)
        return 2 * torch.einsum("cn,cnl->lc", c * b_bar, vandermonde).real


@MIXERS.register("s4d")
class S4D(Mixer):
    """S4D (Gu et al., 2022): a gated block around a diagonal state-space model per channel,
    applied as a long convolution.

    The block: u, z = W_in x; y = W_out(GELU(SSM(u) + D ⊙ u) ⊙ σ(z)), where
    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s, each channel's kernel from `DiagonalSSM`; equivalently
    the recurrence h_t = Ā h_{t−1} + B̄ u_t, SSM(u)_t = 2 Re(Σ_n C_n h_t,n).
    Shapes: x `[B, T, d_model]`, u, z `[B, T, d_inner]` (d_inner = expand · d_model),
    state h `[B, d_inner, d_state/2]` complex, i.e. d_state real numbers per channel.

    The causal form runs in chunks of `chunk_size` steps: inside a chunk the convolution with
    K_0 … K_{C−1} (a masked Toeplitz product), across chunks the recurrence on the states at
    chunk boundaries (decay Ā^C). It is exactly causal, which an FFT is not (its rounding
    reaches every output), and the same code continues from a carried state (T = 1 decodes).
    The bidirectional layout convolves by FFT (`fft_conv`) with a two-sided kernel whose
    anti-causal half comes from a second, separately parameterised SSM (lags 1 … T, so the
    present is counted once).
    """

    layouts = frozenset({LayoutKind.CAUSAL, LayoutKind.BIDIRECTIONAL})
    linear_in_values = True

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 2,
        d_state: int = 16,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if init not in S4D_INITS:
            raise ConfigError(f"s4d init must be one of {S4D_INITS}, got {init!r}")
        if d_state < 2 or d_state % 2:
            raise ConfigError(f"s4d d_state must be a positive even number, got {d_state}")
        check_positive("s4d", expand=expand)
        check_range("s4d", "dt_min", dt_min, "dt_max", dt_max)
        if chunk_size < 1:
            raise ConfigError(f"s4d chunk_size must be positive, got {chunk_size}")
        self.d_model, self.d_inner, self.d_state = d_model, expand * d_model, d_state
        self.chunk_size = chunk_size
        ssm_options = {"init": init, "dt_min": dt_min, "dt_max": dt_max}
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.ssm = DiagonalSSM(self.d_inner, d_state, **ssm_options)
        self.ssm_reverse = DiagonalSSM(self.d_inner, d_state, **ssm_options)
        self.D = nn.Parameter(torch.randn(self.d_inner))
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: S4DState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, S4DState | None]:
        check_input(x, self.d_model)
        stateful_bidirectional = state is not None and not layout.is_causal
        if layout.kind not in self.layouts or stateful_bidirectional:
            raise SeqlabError(
                "s4d supports the causal layout (from a state or not) and the bidirectional "
                f"layout (without a state), got {layout.kind!r}"
                + ("" if state is None else " with a state")
            )
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if layout.kind is LayoutKind.BIDIRECTIONAL:
            steps = u.shape[1]
            kernel = torch.stack([self.ssm.kernel(steps), self.ssm_reverse.kernel(steps + 1)[1:]])
            y, new_state = fft_conv(u, kernel, bidirectional=True)[0], None
        elif state is None:
            y, new_state = self._causal(u, None)[0], None
        else:
            h0 = torch.view_as_complex(state.h.to(state_dtype(u.dtype)).contiguous())
            y, h_last = self._causal(u, h0)
            new_state = S4DState(torch.view_as_real(h_last))
        y = F.gelu(y + self.D * u) * torch.sigmoid(z)
        return self.out(y), new_state

    def _causal(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """SSM(u) `[B, T, d_inner]` from state `h0` (zero when None), and the final state
        `[B, d_inner, d_state/2]` (complex) when `h0` is given."""
        batch, steps, channels = u.shape
        size = min(self.chunk_size, steps)
        n_chunks = -(-steps // size)
        chunks = F.pad(u, (0, 0, 0, n_chunks * size - steps)).unflatten(1, (n_chunks, size))
        dt_a, b_bar, c = self.ssm.discretize()
        powers = torch.exp(dt_a[..., None] * torch.arange(size + 1, device=u.device))
        y = torch.einsum("tsd,bksd->bktd", self._toeplitz(size), chunks)

        carried = h0 is not None
        if not carried:
            if n_chunks == 1:
                return y[:, 0], None
            h0 = b_bar.new_zeros(batch, channels, b_bar.shape[-1])
        # Ā^{C−1−s} B̄: what input s of a chunk leaves in the state at the chunk's end.
        into_state = b_bar[..., None] * powers[..., :size].flip(-1)
        totals = torch.einsum("bksd,dns->bkdn", chunks.to(b_bar.dtype), into_state)
        ends, _ = diagonal_scan(powers[..., size], totals, initial_state=h0)
        starts = torch.cat([h0[:, None], ends[:, :-1]], dim=1)
        from_state = torch.einsum("bkdn,dnt->bktd", starts, c[..., None] * powers[..., 1:])
        y = (y + 2 * from_state.real).flatten(1, 2)[:, :steps]
        if not carried:
            return y, None

        tail = steps - (n_chunks - 1) * size
        h_last = powers[..., tail] * starts[:, -1] + torch.einsum(
            "bsd,dns->bdn", chunks[:, -1, :tail].to(b_bar.dtype), into_state[..., size - tail :]
        )
        return y, h_last

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
        (LTI), and the output SSM(u) + D ⊙ u, before the GELU and gate."""
        check_input(x, self.d_model)
        u, _ = self.in_proj(x).chunk(2, dim=-1)
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
    ) -> S4DState:
        dtype = state_dtype(dtype or self.D.dtype)
        device = device or self.D.device
        return S4DState(
            torch.zeros(batch_size, self.d_inner, self.d_state // 2, 2, device=device, dtype=dtype)
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state

    def mixing_flops(self, seq_len: int) -> float:
        """Per token and channel, in the chunked causal form: the in-chunk Toeplitz product
        (2C, C = min(chunk_size, T)), writing and reading the chunk-boundary states (a complex
        multiply-add, ~8, per complex mode each way: 8 · d_state), then skip, GELU, gate (~10)."""
        return self.d_inner * (2.0 * min(self.chunk_size, seq_len) + 8.0 * self.d_state + 10.0)
