"""Longhorn: the state-space model of Liu et al., "Longhorn: State Space Models are Amortized
Online Learners" (2024), whose recurrence is the closed-form step of an online regression,
in the diagonal form the paper deploys inside a Mamba-style block (no A matrix, no Δ).

`longhorn_scan` runs the recurrence in one of three forms: ``"fused"``, the chunk-by-chunk loop
of Mamba's selective scan with Longhorn's decay rule (`seqlab.ops.selective_scan.
fused_selective_scan`, hand-written backward, states kept only at chunk starts); ``"chunked"``,
a diagonal linear scan (`seqlab.ops.scan.diagonal_scan`) over the full ``[B, T, D, N]`` decays
and inputs; ``"loop"``, `longhorn_scan_loop`, the plain step-by-step reference. ``"auto"``
(the mixer's) picks as `selective_scan` does (`choose_mode`): fused unless the state is tiny.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn

from seqlab.mixers.base import (
    keep_init,
)
from seqlab.mixers.selective_block import SelectiveBlock
from seqlab.ops.scan import diagonal_scan
from seqlab.ops.selective_scan import SelectiveScanMode, choose_mode, fused_selective_scan
from seqlab.registry import MIXERS

__all__ = ["Longhorn", "longhorn_scan", "longhorn_scan_loop"]


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
    mode: SelectiveScanMode = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The diagonal Longhorn recurrence over a whole sequence. Per channel d and state n:

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
        mode: ``"fused"``, ``"chunked"``, ``"loop"`` or ``"auto"`` (the module docstring).
        chunk_size: steps per chunk of the fused loop; None picks
            `seqlab.ops.selective_scan.default_chunk_size`.

    Returns:
        (y `[B, T, D]`, h_{T−1} `[B, D, N]` or None).
    """
    if mode not in get_args(SelectiveScanMode):
        raise ValueError(f"mode must be one of {get_args(SelectiveScanMode)}, got {mode!r}")
    if mode == "auto":
        mode = choose_mode(*u.shape, k.shape[-1])
    if mode == "loop":
        y, h_last = longhorn_scan_loop(u, beta, k, q, D, initial_state=initial_state)
        return y, (h_last if output_final_state else None)
    eps = longhorn_step_size(beta, k)
    if mode == "fused":
        y, h_last = fused_selective_scan(
            eps * u, k, q, "longhorn", (eps, k), initial_state=initial_state, chunk_size=chunk_size
        )
    else:
        decay = 1 - eps[..., None] * k.square()[:, :, None, :]  # [B, T, D, N]
        drive = (eps * u)[..., None] * k[:, :, None, :]
        h, h_last = diagonal_scan(
            decay, drive, initial_state=initial_state, output_final_state=True
        )
        y = torch.einsum("btdn,btn->btd", h, q)
    if D is not None:
        y = y + D * u
    return y, (h_last if output_final_state else None)


def longhorn_scan_loop(
    u: Tensor,
    beta: Tensor,
    k: Tensor,
    q: Tensor,
    D: Tensor | None = None,
    *,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference for `longhorn_scan` (its ``"loop"`` mode): one step at a time through
    autograd, written as the online regression's closed-form update of each channel's weights
    h_d (restricted to the diagonal of k kᵀ). Returns (y `[B, T, D]`, h_{T−1} `[B, D, N]`)."""
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


@MIXERS.register("longhorn")
class Longhorn(SelectiveBlock):
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
    The block, its other layouts and its decode state are `SelectiveBlock`'s.
    """

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
        super().__init__(
            d_model, expand=expand, d_state=d_state, conv_size=conv_size, dt_rank=dt_rank
        )
        self.beta_proj = nn.Linear(self.dt_rank, self.d_inner)
        self._build_output(n_layers)
        keep_init(self.beta_proj.weight)  # b_β: the model-wide init zeroes linear biases

    def _scan(
        self,
        u: Tensor,
        delta: Tensor,
        B: Tensor,
        C: Tensor,
        initial_state: Tensor | None,
        output_final_state: bool,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The Longhorn scan with β = σ(W_β δ + b_β), keys k = B and queries q = C; the fused
        loop unless the state is tiny (``mode="auto"``, as `mamba`)."""
        return longhorn_scan(
            u,
            torch.sigmoid(self.beta_proj(delta)).to(u.dtype),
            B,
            C,
            self.D.to(u.dtype),
            initial_state=initial_state,
            output_final_state=output_final_state,
            mode="loop" if reference else "auto",
        )

    def mixing_flops(self, seq_len: int) -> float:
        """Per inner channel: the scan (~7 per state element: ε k², 1 − ·, ε x k, the update
        a h + b, the readout with q), ε from β and ‖k‖² (~4), the sigmoid (~4), the depthwise
        conv (2 · conv_size), skip and SiLU gates (~12); plus ‖k‖² once per token (2 N)."""
        return self.d_inner * (7.0 * self.d_state + 2.0 * self.conv.kernel_size + 20.0) + (
            2.0 * self.d_state
        )
