"""Mamba: the selective state-space (S6) block of Gu & Dao, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces" (2023), trained with the fused selective scan of
`seqlab.ops.selective_scan`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import (
    ALL_LAYOUTS,
    Layout,
    Mixer,
    check_expand,
    check_input,
    check_scan_layout,
    no_weight_decay,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.selective_scan import selective_scan
from seqlab.registry import MIXERS


@dataclass
class MambaState:
    """`conv`: the last d_conv − 1 conv inputs `[B, d_conv − 1, d_inner]`;
    `ssm`: h `[B, d_inner, d_state]`."""

    conv: Tensor
    ssm: Tensor


@MIXERS.register("mamba")
class Mamba(Mixer):
    """The Mamba block:

        u, z = W_in x;  u = SiLU(conv(u));  (δ, B, C) = W_x u;  Δ = softplus(W_Δ δ + b_Δ)
        y = W_out(S6(u; Δ, A, B, C, D) ⊙ SiLU(z))

    Shapes: x `[B, T, d_model]`; u, z, Δ `[B, T, d_inner]` (d_inner = expand · d_model);
    δ `[B, T, dt_rank]`; B, C `[B, T, d_state]`; A `[d_inner, d_state]`.
    Init (the paper's): A = −exp(A_log) with A_n = −n, n = 1 … d_state ("S4D-Real");
    W_Δ ~ U(±dt_rank^−½); b_Δ = softplus⁻¹(Δ₀) with Δ₀ log-uniform in [dt_min, dt_max]
    (floored at 1e-4); D = 1. One deliberate departure: the conv bias starts at 0, not at
    nn.Conv1d's U(±d_conv^−½) as in the reference; with that bias selective copying solved
    0 of 5 seeds instead of 3 of 5 (docs/results.md). A is not weight-decayed (as in the
    paper; decay pulled log|A_n| towards 0 and erased the A_n = −n spacing in a 3000-step
    run, docs/results.md).
    `negative_eigenvalues` (Grazzi et al., 2025) maps each decay exp(ΔA) ∈ (0, 1) to
    2 exp(ΔA) − 1 ∈ (−1, 1), which lets a layer track parity.
    `mimetic` starts S6 close to linear attention with tied queries and keys, the idea of
    Trockman et al. 2024 ("Mimetic Initialization Helps State Space Models Learn to Recall"):
    the C rows of W_x start as a copy of the B rows, so C_t·B_s is a similarity of the two
    inputs (q = k), and A_n = −n/100, so that exp(ΔA) ≈ 1 and the state forgets little at
    first (A stays learnable; the parameter choices are seqlab's).
    Other layouts (`scan_in_layout`): the same conv and S6 also run over the reversed sequence
    (or each block of it); the directions are summed before the gate (each includes its own
    D skip).
    """

    layouts = ALL_LAYOUTS


    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        negative_eigenvalues: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mimetic: bool = False,
    ) -> None:
        super().__init__()
        check_expand(expand, "mamba")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ConfigError(
                f"mamba dt_rank must be 'auto' or a positive integer, got {dt_rank!r}"
            )
        if d_state < 1 or d_conv < 1:
            raise ConfigError(f"mamba d_state and d_conv must be positive, got {d_state}, {d_conv}")
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"mamba needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        for name, flag in (("negative_eigenvalues", negative_eigenvalues), ("mimetic", mimetic)):
            if not isinstance(flag, bool):
                raise ConfigError(f"mamba {name} must be true or false, got {flag!r}")
        self.d_model, self.d_inner, self.d_state = d_model, expand * d_model, d_state
        self.dt_rank, self.dt_min, self.dt_max = dt_rank, dt_min, dt_max
        self.negative_eigenvalues, self.mimetic = negative_eigenvalues, mimetic
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = ShortConv(self.d_inner, d_conv, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        no_weight_decay(self.A_log)
        self.out = nn.Linear(self.d_inner, d_model, bias=False)
        self._reset_structured()

    @torch.no_grad()
    def init_weights(self, std: float, out_std: float) -> None:
        """The reference implementation's init, not the model-wide Normal(0, std): the input,
        x and output projections keep PyTorch's default U(±fan_in^−½), the output one scaled
        by out_std / std (the residual rescaling). With Normal(0, 0.02) everywhere the
        selective part of S6 (Δ·B·C) started at 2e-5 of the D skip (3e-3 with this init) and
        selective copying sat at chance for hundreds to thousands of steps."""
        for linear in (self.in_proj, self.x_proj, self.out):
            linear.reset_parameters()
        self.out.weight.mul_(out_std / std)
        self._reset_structured()

    @torch.no_grad()
    def _reset_structured(self) -> None:
        self.conv.reset_parameters()
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.empty_like(self.dt_proj.bias).uniform_(
            math.log(self.dt_min), math.log(self.dt_max)
        )
        dt = dt.exp().clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype)
        if self.mimetic:
            n = n / 100
            _, w_b, w_c = self.x_proj.weight.split([self.dt_rank, self.d_state, self.d_state])
            w_c.copy_(w_b)
        self.A_log.copy_(n.log().expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(
        self,
        x: Tensor,
        state: MambaState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, MambaState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "mamba")
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y, new_state = scan_in_layout(
            lambda inputs, s: self._conv_and_scan(*inputs, s), (u,), state, layout, self.init_state
        )
        return self.out(y * F.silu(z)), new_state

    def _conv_and_scan(
        self, u: Tensor, state: MambaState | None
    ) -> tuple[Tensor, MambaState | None]:
        """SiLU(conv(u)) then S6; the scan runs in float32 (float64 for float64 inputs)."""
        u, conv_state = self.conv(u, None if state is None else state.conv)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dtype = state_dtype(u.dtype)
        y, h_last = selective_scan(
            u.to(dtype),
            F.softplus(self.dt_proj(dt)).to(dtype),
            -self.A_log.exp().to(dtype),
            B.to(dtype),
            C.to(dtype),
            self.D.to(dtype),
            negative_eigenvalues=self.negative_eigenvalues,
            initial_state=None if state is None else state.ssm.to(dtype),
            output_final_state=state is not None,
        )
        new_state = None if state is None else MambaState(conv_state.to(dtype), h_last)
        return y.to(u.dtype), new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaState:
        device = device or self.D.device
        dtype = state_dtype(dtype or self.D.dtype)
        return MambaState(
            self.conv.init_state(batch_size, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state + self.conv.state_size()

    def mixing_flops(self, seq_len: int) -> float:
        """Per inner channel: the selective scan (~9 per state element: discretise A and B,
        update h, read out with C), the depthwise conv (2 · d_conv), softplus, skip and the
        SiLU gates (~12)."""
        return self.d_inner * (9.0 * self.d_state + 2.0 * self.conv.kernel_size + 12.0)
