"""The Linear Recurrent Unit (Orvieto et al., 2023): a complex diagonal linear recurrence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import (
    Mixer,
    check_input,
    check_scan_layout,
    keep_init,
    scan_in_layout,
    state_dtype,
)
from seqlab.ops.scan import diagonal_scan
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import current_shard, shard_entry, shard_state_scan


@dataclass
class LRUState:
    """The complex state stored as real pairs, `h [B, d_state, 2]`."""

    h: Tensor


@MIXERS.register("lru")
class LRU(Mixer):
    """Linear Recurrent Unit (Orvieto et al., 2023): a complex diagonal linear recurrence with
    stable exponential eigenvalues and normalised inputs.

    From "Resurrecting Recurrent Neural Networks for Long Sequences":
    λ = exp(−exp(ν) + i exp(θ)) (|λ| < 1 for any ν, θ), h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t),
    y_t = Re(C h_t) + D ⊙ x_t, run with `diagonal_scan` on complex values.
    Shapes: x `[B, T, d_model]`, h `[B, T, d_state]` complex.
    B is `in_proj` (rows Re B, Im B) and C is `out` (columns Re C, −Im C), so C takes the
    model's residual output scale; the rest is the paper's init: |λ| uniform on the ring
    [r_min, r_max] (by area), arg λ ~ U[0, max_phase], γ = √(1 − |λ|²) (then trained, in
    log space), B ~ CN(0, 1/d_model), D ~ N(0, 1).
    Other layouts (`scan_in_layout`): the same recurrence also scans the reversed sequence (or
    each block of it); the states are summed before C.
    Sequence parallelism (`shard_state_scan`): T_r = λ^T and the zero-input response
    h_t = λ^{t+1} ⊙ S_in in closed form.
    """

    layouts = ALL_LAYOUTS
    sequence_parallel = True

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        d_state = d_state or d_model
        if d_state < 1:
            raise ConfigError(f"lru d_state must be positive, got {d_state}")
        if not 0 <= r_min < r_max <= 1:
            raise ConfigError(f"lru needs 0 <= r_min < r_max <= 1, got {r_min}, {r_max}")
        self.d_model, self.d_state = d_model, d_state
        # |λ|² uniform in [r_min², r_max²] is uniform by area on the ring; the clamp keeps
        # log |λ| finite at the ends of the default ring [0, 1].
        radius_sq = torch.rand(d_state) * (r_max**2 - r_min**2) + r_min**2
        radius_sq = radius_sq.clamp(1e-8, 1 - 1e-8)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(radius_sq)))
        self.theta_log = nn.Parameter(torch.log(max_phase * torch.rand(d_state) + 1e-8))
        self.gamma_log = nn.Parameter(0.5 * torch.log1p(-radius_sq))
        self.in_proj = nn.Linear(d_model, 2 * d_state, bias=False)
        nn.init.normal_(self.in_proj.weight, std=(2 * d_model) ** -0.5)
        keep_init(self.in_proj.weight)
        self.D = nn.Parameter(torch.randn(d_model))
        self.out = nn.Linear(2 * d_state, d_model, bias=False)

    def eigenvalues(self) -> Tensor:
        """λ `[d_state]`, complex."""
        return torch.exp(self.log_eigenvalues())

    def log_eigenvalues(self) -> Tensor:
        """log λ = −exp(ν) + i exp(θ) `[d_state]`."""
        return torch.complex(-self.nu_log.exp(), self.theta_log.exp())

    def forward(
        self,
        x: Tensor,
        state: LRUState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LRUState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "lru")
        dtype = state_dtype(x.dtype)
        re, im = self.in_proj(x).to(dtype).chunk(2, dim=-1)
        inputs = self.gamma_log.exp().to(dtype) * torch.complex(re, im)
        decay = self.eigenvalues().to(inputs.dtype)
        if current_shard() is not None:
            shard_entry(self.name, state, layout)
            h = self._sharded_scan(decay, inputs)
            return self.out(torch.cat([h.real, h.imag], dim=-1).to(x.dtype)) + self.D * x, None

        def recur(parts: tuple[Tensor, ...], s: LRUState | None) -> tuple[Tensor, LRUState | None]:
            h0 = None if s is None else torch.view_as_complex(s.h.to(dtype).contiguous())
            h, h_last = diagonal_scan(
                decay, parts[0], initial_state=h0, output_final_state=s is not None
            )
            return h, None if s is None else LRUState(torch.view_as_real(h_last))

        h, new_state = scan_in_layout(recur, (inputs,), state, layout, self.init_state)
        y = self.out(torch.cat([h.real, h.imag], dim=-1).to(x.dtype)) + self.D * x
        return y, new_state

    def _sharded_scan(self, decay: Tensor, inputs: Tensor) -> Tensor:
        """h `[B, T, d_state]` of this rank's shard under sequence parallelism."""
        steps = torch.arange(1, inputs.shape[1] + 1, device=inputs.device)
        powers = torch.exp(steps[:, None] * self.log_eigenvalues().to(inputs.dtype))  # λ^{t+1}

        def local() -> tuple[Tensor, Tensor]:
            return diagonal_scan(decay, inputs, output_final_state=True)  # type: ignore[return-value]

        def response(start: Tensor) -> tuple[Tensor, Tensor]:
            h = powers * start[:, None]
            return h, h[:, -1]

        return shard_state_scan(local, response, powers[-1].expand_as(inputs[:, 0]))

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LRUState:
        return LRUState(
            torch.zeros(
                batch_size,
                self.d_state,
                2,
                device=device or self.D.device,
                dtype=state_dtype(dtype or self.D.dtype),
            )
        )

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_state

    def mixing_flops(self, seq_len: int) -> float:
        """Per complex state number: γ scaling and the scan's complex multiply-add (~10);
        plus the D skip (2 per model channel)."""
        return 10.0 * self.d_state + 2.0 * self.d_model
