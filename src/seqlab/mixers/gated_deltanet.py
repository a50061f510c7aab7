"""Gated DeltaNet (Yang et al., 2025): DeltaNet with Mamba-2's per-head decay, on
`ops.delta_rule`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.mixers.common import check_range, dt_bias_init, uniform_A_log
from seqlab.mixers.deltanet import DeltaNet
from seqlab.ops.delta_rule import gated_delta_rule
from seqlab.registry import MIXERS


@MIXERS.register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang et al., 2025): DeltaNet with Mamba-2's data-dependent scalar
    decay per head.

    From "Gated Delta Networks: Improving Mamba2 with Delta Rule":

        α_t = exp(g_t),  g_t = −exp(A_log) · softplus(W_a x_t + b_Δ)
        S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ

    Init as Mamba-2's: A = exp(A_log) ~ U[A_min, A_max] per head, b_Δ = softplus⁻¹(Δ₀) with
    Δ₀ log-uniform in [dt_min, dt_max]. V defaults to 2 · d_model / heads (the paper's
    expand_v = 2). Everything else, `negative_eigenvalues` included, is DeltaNet's.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        conv_size: int = 4,
        negative_eigenvalues: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        A_min: float = 1.0,
        A_max: float = 16.0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(
            d_model,
            heads,
            expand_k=expand_k,
            expand_v=expand_v,
            conv_size=conv_size,
            negative_eigenvalues=negative_eigenvalues,
            chunk_size=chunk_size,
        )
        check_range(self.name, "dt_min", dt_min, "dt_max", dt_max)
        check_range(self.name, "A_min", A_min, "A_max", A_max)
        self.decay_proj = nn.Linear(d_model, heads, bias=False)
        self.A_log = nn.Parameter(uniform_A_log(heads, A_min, A_max))
        self.dt_bias = nn.Parameter(dt_bias_init(heads, dt_min, dt_max))

    def log_decay(self, decay_logits: Tensor) -> Tensor:
        """g = −exp(A_log) · softplus(W_a x + b_Δ) `[B, T, H]` (≤ 0) from W_a x."""
        return -self.A_log.exp() * F.softplus(decay_logits + self.dt_bias)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        (qkv, beta_logits), gate = super()._project(x)
        return (qkv, beta_logits, self.decay_proj(x)), gate

    def _kernel(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, decay_logits: Tensor, **kernel: object
    ) -> tuple[Tensor, ...]:
        return gated_delta_rule(q, k, v, self.log_decay(decay_logits), beta, **kernel)

    def mixing_flops(self, seq_len: int) -> float:
        """DeltaNet's, plus the decay factors inside the chunk (~2C per token and head)."""
        c = min(self.chunk_size, max(seq_len, 1))
        return super().mixing_flops(seq_len) + self.heads * (2.0 * c + 8.0)
