"""S4D: a diagonal state-space model per channel, trained as a long convolution.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State Space
Models" (2022). Each channel holds a complex diagonal SSM whose kernel is computed by a
Vandermonde product and applied with `fft_conv`; decoding runs the same SSM as a recurrence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.base import Layout, Mixer, check_input
from seqlab.mixers.rnn import check_scan_layout, state_dtype
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
        self.log_dt.uniform_(math.log(self.dt_min), math.log(self.dt_max))
        self.B.zero_()[..., 0] = 1.0
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


class S4D(Mixer):
    """A gated S4D block: u, z = W_in x; y = W_out(GELU(SSM(u) + D ⊙ u) ⊙ σ(z)).

    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s with each channel's kernel from `DiagonalSSM`, computed
    in training by FFT (`fft_conv`) and at decode time by the recurrence
    h_t = Ā h_{t−1} + B̄ u_t, SSM(u)_t = 2 Re(Σ_n C_n h_t,n) (`diagonal_scan`, complex).
    Shapes: x `[B, T, d_model]`, u, z `[B, T, d_inner]` (d_inner = expand · d_model),
    state h `[B, d_inner, d_state/2]` complex, i.e. d_state real numbers per channel.

    Bidirectional layout: a second, separately parameterised SSM reads the future, entering
    as the anti-causal half of a two-sided kernel (lags 1 … T, so the present is counted once).
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
    ) -> None:
        super().__init__()
        if init not in S4D_INITS:
            raise ConfigError(f"s4d init must be one of {S4D_INITS}, got {init!r}")
        if d_state < 2 or d_state % 2:
            raise ConfigError(f"s4d d_state must be a positive even number, got {d_state}")
        if expand < 1:
            raise ConfigError(f"s4d expand must be >= 1, got {expand}")
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"s4d needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.d_inner, self.d_state = d_model, expand * d_model, d_state
        ssm_options = {"init": init, "dt_min": dt_min, "dt_max": dt_max}
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.ssm = DiagonalSSM(self.d_inner, d_state, **ssm_options)
        self.ssm_reverse = DiagonalSSM(self.d_inner, d_state, **ssm_options)
        self.D = nn.Parameter(torch.randn(self.d_inner))
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self.ssm.reset_parameters()
        self.ssm_reverse.reset_parameters()
        nn.init.normal_(self.D)

    def forward(
        self,
        x: Tensor,
        state: S4DState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, S4DState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "s4d")
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if state is None:
            y, new_state = self._convolve(u, bidirectional=layout.kind == "bidirectional"), None
        else:
            y, new_state = self._recur(u, state)
        y = F.gelu(y + self.D * u) * torch.sigmoid(z)
        return self.out(y), new_state

    def _convolve(self, u: Tensor, *, bidirectional: bool) -> Tensor:
        steps = u.shape[1]
        if not bidirectional:
            return fft_conv(u, self.ssm.kernel(steps))[0]
        kernel = torch.stack([self.ssm.kernel(steps), self.ssm_reverse.kernel(steps + 1)[1:]])
        return fft_conv(u, kernel, bidirectional=True)[0]

    def _recur(self, u: Tensor, state: S4DState) -> tuple[Tensor, S4DState]:
        dtype = state_dtype(u.dtype)
        dt_a, b_bar, c = self.ssm.discretize()
        h0 = torch.view_as_complex(state.h.to(dtype).contiguous())
        h, h_last = diagonal_scan(
            dt_a.exp(), b_bar * u.to(dtype)[..., None], initial_state=h0, output_final_state=True
        )
        y = 2 * torch.einsum("btcn,cn->btc", h, c).real
        return y.to(u.dtype), S4DState(torch.view_as_real(h_last).to(dtype))

    def init_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> S4DState:
        dtype = state_dtype(dtype or self.D.dtype)
        device = device or self.D.device
        return S4DState(
            torch.zeros(batch_size, self.d_inner, self.d_state // 2, 2, device=device, dtype=dtype)
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state

    def mixing_flops(self, seq_len: int) -> float:
        """FFT convolution per token and channel: forward and inverse real FFTs of size
        n ≈ 2T (2.5 n log2 n each) plus the spectral product (3n), over T tokens; then the
        skip, GELU and gate (~10)."""
        n = 2 * seq_len
        return self.d_inner * ((5 * n * math.log2(n) + 3 * n) / seq_len + 10)


@MIXERS.register(
    "s4d",
    description="S4D diagonal state-space model (S4D-Lin/Inv init, FFT conv training)",
    family="ssm",
    layouts=("causal", "bidirectional"),
    state="fixed",
    options=("expand", "d_state", "init", "dt_min", "dt_max"),
)
def build_s4d(config: ModelConfig, layer: int, **options: object) -> S4D:
    return S4D(config.d_model, **options)
