"""S4D: a diagonal state-space model per channel, applied as a long convolution.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State Space
Models" (2022). Each channel holds a complex diagonal SSM whose convolution kernel is a
Vandermonde product. The causal form convolves inside chunks and carries the SSM state across
them (exactly causal, and the same code decodes); the bidirectional form uses `fft_conv`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import no_weight_decay
from seqlab.mixers.common import log_uniform_log_dt
from seqlab.mixers.conv_ssm import ChunkMaps, GatedConvSSM, StateSpace
from seqlab.registry import MIXERS

S4D_INITS = ("lin", "inv")


class DiagonalSSM(StateSpace):
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

    def chunk_maps(self, size: int, tail: int) -> ChunkMaps:
        """Diagonal maps over the complex modes: write Ā^{C−1−s} B̄, read 2 C Ā^{t+1} (the
        conjugate pair doubles the real part), decay Ā^C, last Ā^{tail}."""
        dt_a, b_bar, c = self.discretize()
        powers = torch.exp(dt_a[..., None] * torch.arange(size + 1, device=dt_a.device))
        return ChunkMaps(
            write=b_bar[..., None] * powers[..., :size].flip(-1),
            read=2 * c[..., None] * powers[..., 1:],
            decay=powers[..., size],
            last=powers[..., tail],
        )

    def transition(self, length: int) -> Tensor:
        """Ā^length = exp(length ΔA) `[channels, d_state/2]`."""
        return torch.exp(self.discretize()[0] * length)

    def load_state(self, pairs: Tensor) -> Tensor:
        return torch.view_as_complex(pairs.contiguous())

    def store_state(self, h: Tensor) -> Tensor:
        return torch.view_as_real(h)


@MIXERS.register("s4d")
class S4D(GatedConvSSM):
    """S4D (Gu et al., 2022): the `GatedConvSSM` block around a diagonal state-space model per
    channel (`DiagonalSSM`), applied as a long convolution.

    The block: u, z = W_in x; y = W_out(GELU(SSM(u) + D ⊙ u) ⊙ σ(z)), where
    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s, each channel's kernel a Vandermonde product; equivalently
    the recurrence h_t = Ā h_{t−1} + B̄ u_t, SSM(u)_t = 2 Re(Σ_n C_n h_t,n).
    Shapes: x `[B, T, d_model]`, u, z `[B, T, d_inner]` (d_inner = expand · d_model),
    state h `[B, d_inner, d_state/2]` complex, i.e. d_state real numbers per channel.
    The causal form is chunked (exactly causal, continues from a state), the bidirectional one
    an FFT convolution with a second SSM for the future (see `ConvSSM`).
    """

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
        if init not in S4D_INITS:
            raise ConfigError(f"s4d init must be one of {S4D_INITS}, got {init!r}")
        dt_range = {"dt_min": dt_min, "dt_max": dt_max}
        super().__init__(d_model, expand=expand, d_state=d_state, chunk_size=chunk_size, **dt_range)
        self.ssm = DiagonalSSM(self.d_inner, d_state, init=init, **dt_range)
        self.ssm_reverse = DiagonalSSM(self.d_inner, d_state, init=init, **dt_range)

    def mixing_flops(self, seq_len: int) -> float:
        """Per token and channel, in the chunked causal form: the in-chunk Toeplitz product
        (2C, C = min(chunk_size, T)), writing and reading the chunk-boundary states (a complex
        multiply-add, ~8, per complex mode each way: 8 · d_state), then skip, GELU, gate (~10)."""
        return self.d_inner * (2.0 * min(self.chunk_size, seq_len) + 8.0 * self.d_state + 10.0)
