"""Longhorn: the state-space model of Liu et al., "Longhorn: State Space Models are Amortized
Online Learners" (2024), whose recurrence is the closed-form step of an online regression,
in the diagonal form the paper deploys inside a Mamba-style block (no A matrix, no Δ).

The recurrence runs in parallel as a diagonal linear scan (`seqlab.ops.scan.diagonal_scan`);
`longhorn_scan_loop` is its plain step-by-step reference.
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
    check_input,
    check_scan_layout,
    keep_init,
    no_weight_decay,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.common import check_expand, check_positive
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.scan import diagonal_scan
from seqlab.registry import MIXERS

__all__ = ["Longhorn", "LonghornState", "longhorn_scan", "longhorn_scan_loop"]


def longhorn_step_size(beta: Tensor, k: Tensor) -> Tensor:
    """ε_t = β_t / (1 + β_t ‖k_t‖²) for β `[B, T, D]` and k `[B, T, N]` -> `[B, T, D]`."""
    return beta / (1 + beta * k.square().sum(-1, keepdim=True))


def longhorn_scan(
    u: Tensor,
    beta: Tensor,
    k: Tensor,
    q: Tensor,
    D: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The diagonal Longhorn recurrence, in parallel over time. Per channel d and state n:

        ε_t = β_t / (1 + β_t ‖k_t‖²)                          (per channel, `[B, T, D]`)
        h_t = (1 − ε_t k_t²) ⊙ h_{t−1} + ε_t u_t k_t           (a_t = 1 − ε_t ⊗ k_t², b_t)
        y_t = h_t q_t + D ⊙ u_t                                 (the sum over n)

    a_t lies in (0, 1] for every β_t ≥ 0 (ε_t k_{t,n}² ≤ β_t ‖k_t‖² / (1 + β_t ‖k_t‖²) < 1),
    so the scan is stable whatever k.

    Args:
        u: inputs x `[B, T, D]` (the regression targets).
        beta: step sizes β `[B, T, D]`, in (0, 1) (a sigmoid).
        k: keys `[B, T, N]` (the regression inputs); q: queries `[B, T, N]`.
        D: skip `[D]`; none when None.
        initial_state: h_{−1} `[B, D, N]`; zeros when None.
        output_final_state: also return h_{T−1}.

    Returns:
        (y `[B, T, D]`, h_{T−1} `[B, D, N]` or None).
    """
    eps = longhorn_step_size(beta, k)
    decay = 1 - eps[..., None] * k.square()[:, :, None, :]  # [B, T, D, N]
    drive = (eps * u)[..., None] * k[:, :, None, :]
    h, h_last = diagonal_scan(
        decay, drive, initial_state=initial_state, output_final_state=output_final_state
    )
    y = torch.einsum("btdn,btn->btd", h, q)
    if D is not None:
        y = y + D * u
    return y, h_last


def longhorn_scan_loop(
    u: Tensor,
    beta: Tensor,
    k: Tensor,
    q: Tensor,
    D: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference for `longhorn_scan`: one step at a time through autograd, written as the
    online regression's closed-form update of each channel's weights h_d (restricted to the
    diagonal of k kᵀ). Returns (y `[B, T, D]`, h_{T−1} `[B, D, N]`)."""
    batch, steps, channels = u.shape
    h = initial_state
    if h is None:
        h = u.new_zeros(batch, channels, k.shape[-1])
    ys = []
    for t in range(steps):
        k_t, beta_t = k[:, t, None, :], beta[:, t, :, None]  # [B, 1, N], [B, D, 1]
        eps_t = beta_t / (1 + beta_t * (k_t * k_t).sum(-1, keepdim=True))
        h = h - eps_t * k_t * k_t * h + eps_t * k_t * u[:, t, :, None]
        y_t = (h * q[:, t, None, :]).sum(-1)
        if D is not None:
            y_t = y_t + D * u[:, t]
        ys.append(y_t)
    return torch.stack(ys, 1), h


@dataclass
class LonghornState:
    """`conv`: the last conv_size − 1 conv inputs `[B, conv_size − 1, d_inner]`;
    `ssm`: h `[B, d_inner, d_state]`."""

    conv: Tensor
    ssm: Tensor


@MIXERS.register("longhorn")
class Longhorn(Mixer):
    """Longhorn (Liu et al., 2024): a Mamba-style block whose state update is the closed-form
    step of an online regression, so forgetting comes from the keys (no A matrix, no Δ).

    Test-time regression. Each inner channel d keeps weights s_d ∈ ℝ^N that predict the
    channel's input x_{t,d} from the key k_t ∈ ℝ^N. At every step they solve, exactly,

        s_{t,d} = argmin_s ‖s − s_{t−1,d}‖² + β_{t,d} (k_tᵀ s − x_{t,d})²

    (stay close to the old weights, fit the new pair with weight β). By Sherman–Morrison
    the minimiser is

        s_t = (I − ε_t k_t k_tᵀ) s_{t−1} + ε_t k_t x_t,    ε_t = β_t / (1 + β_t k_tᵀ k_t).

    The deployed form (the paper's) keeps only the diagonal of k_t k_tᵀ, which turns the
    update into an elementwise scan over h = [s_1 … s_{d_inner}]ᵀ:

        h_t = (1 − ε_t ⊗ k_t²) ⊙ h_{t−1} + (ε_t ⊙ x_t) ⊗ k_t,   y_t = h_t q_t + D ⊙ x_t

    with decays 1 − ε_{t,d} k_{t,n}² ∈ (0, 1] (stable for any k), read out by the query q_t.

    The block (Mamba's, with (Δ, B, C) replaced by (β, k, q)):

        u, z = W_in x;  u = SiLU(conv(u));  (δ, k, q) = W_x u;  β = σ(W_β δ + b_β)
        y = W_out(Longhorn(u; β, k, q, D) ⊙ SiLU(z))

    Shapes: x `[B, T, d_model]`; u, z, β, ε `[B, T, d_inner]` (d_inner = expand · d_model);
    δ `[B, T, dt_rank]`; k, q `[B, T, d_state]`; h `[B, d_inner, d_state]`.
    Init (the reference implementation's): W_in, W_x and W_β keep PyTorch's U(±fan_in^−½);
    b_β = 0, so β starts near σ(0) = ½; W_out the same U(±fan_in^−½) scaled by 1/√(2 n_layers)
    (the residual rescaling, as in `mamba`); D = 1, not weight-decayed. As in seqlab's `mamba`
    the conv bias starts at 0 (the reference keeps nn.Conv1d's uniform bias).
    Other layouts (`scan_in_layout`): the same conv and scan also run over the reversed
    sequence (or each block of it), summed before the gate (each with its own D skip).
    """

    layouts = ALL_LAYOUTS

    def __init__(
        self,
        d_model: int,
        *,
        n_layers: int = 1,
        expand: int = 2,
        d_state: int = 16,
        conv_size: int = 4,
        dt_rank: int | str = "auto",
    ) -> None:
        super().__init__()
        check_expand(expand, "longhorn")
        check_positive("longhorn", d_state=d_state, conv_size=conv_size, n_layers=n_layers)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ConfigError(
                f"longhorn dt_rank must be 'auto' or a positive integer, got {dt_rank!r}"
            )
        self.d_model, self.d_inner, self.d_state = d_model, expand * d_model, d_state
        self.dt_rank = dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = ShortConv(self.d_inner, conv_size, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.beta_proj = nn.Linear(dt_rank, self.d_inner)
        self.D = nn.Parameter(torch.ones(self.d_inner))
        no_weight_decay(self.D)
        self.out = nn.Linear(self.d_inner, d_model, bias=False)
        with torch.no_grad():
            self.out.weight.mul_((2 * n_layers) ** -0.5)
            self.beta_proj.bias.zero_()
        keep_init(self.in_proj.weight, self.x_proj.weight, self.out.weight)
        keep_init(self.beta_proj.weight, self.beta_proj.bias)

    def forward(
        self,
        x: Tensor,
        state: LonghornState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LonghornState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "longhorn")
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y, new_state = scan_in_layout(
            lambda inputs, s: self._conv_and_scan(*inputs, s), (u,), state, layout, self.init_state
        )
        return self.out(y * F.silu(z)), new_state

    def _conv_and_scan(
        self, u: Tensor, state: LonghornState | None
    ) -> tuple[Tensor, LonghornState | None]:
        """SiLU(conv(u)) then the Longhorn scan, in float32 (float64 for float64 inputs)."""
        u, conv_state = self.conv(u, None if state is None else state.conv)
        delta, k, q = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dtype = state_dtype(u.dtype)
        y, h_last = longhorn_scan(
            u.to(dtype),
            torch.sigmoid(self.beta_proj(delta)).to(dtype),
            k.to(dtype),
            q.to(dtype),
            self.D.to(dtype),
            initial_state=None if state is None else state.ssm.to(dtype),
            output_final_state=state is not None,
        )
        new_state = None if state is None else LonghornState(conv_state.to(dtype), h_last)
        return y.to(u.dtype), new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LonghornState:
        device = device or self.D.device
        dtype = state_dtype(dtype or self.D.dtype)
        return LonghornState(
            self.conv.init_state(batch_size, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state + self.conv.state_size()

    def mixing_flops(self, seq_len: int) -> float:
        """Per inner channel: the scan (~7 per state element: ε k², 1 − ·, ε x k, the update
        a h + b, the readout with q), ε from β and ‖k‖² (~4), the sigmoid (~4), the depthwise
        conv (2 · conv_size), skip and SiLU gates (~12); plus ‖k‖² once per token (2 N)."""
        return self.d_inner * (7.0 * self.d_state + 2.0 * self.conv.kernel_size + 20.0) + (
            2.0 * self.d_state
        )
