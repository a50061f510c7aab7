"""Delta-rule mixers: DeltaNet and Gated DeltaNet, on `ops.delta_rule`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.linear import (
    LinearRecurrence,
    LinearState,
    check_bool,
    check_positive,
    head_dim,
    heads_view,
)
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.delta_rule import delta_rule, gated_delta_rule
from seqlab.registry import MIXERS


@MIXERS.register("deltanet")
class DeltaNet(LinearRecurrence):
    """DeltaNet (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over
    Sequence Length", 2024):

        q, k, v = SiLU(conv(W_qkv x));  q, k ← q/‖q‖, k/‖k‖ per head;  β_t = σ(W_β x_t)
        S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / √K
        y = W_out(RMSNorm_head(o) ⊙ SiLU(W_g x))

    Shapes: q, k `[B, T, H, K]` with K = expand_k · d_model / heads; v `[B, T, H, V]` with
    V = expand_v · d_model / heads; β `[B, T, H]`; S `[B, H, K, V]`. The short conv
    (`conv_size` taps, depthwise, SiLU) runs over q, k and v together; the output RMSNorm
    normalises each head's V channels with one weight shared by the heads.
    `negative_eigenvalues` (Grazzi et al., 2025): β_t = 2 σ(W_β x_t) ∈ [0, 2], so the
    transition I − β k kᵀ has the eigenvalue 1 − β ∈ [−1, 1] along k (a reflection at β = 2).
    """

    name = "deltanet"

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        negative_eigenvalues: bool = False,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(self.name, conv_size=conv_size)
        check_bool(self.name, negative_eigenvalues=negative_eigenvalues)
        self.state_k = head_dim(self.name, "key", expand_k * d_model, heads)
        self.state_v = head_dim(self.name, "value", expand_v * d_model, heads)
        self.negative_eigenvalues = negative_eigenvalues
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * key_width + value_width, bias=False)
        self.conv = ShortConv(2 * key_width + value_width, conv_size, activation="silu")
        self.beta_proj = nn.Linear(d_model, heads, bias=False)
        self.gate = nn.Linear(d_model, value_width, bias=False)
        self.norm = nn.RMSNorm(self.state_v, eps=1e-5)
        self.out = nn.Linear(value_width, d_model, bias=False)

    def write_strength(self, beta_logits: Tensor) -> Tensor:
        """β = σ(·) ∈ [0, 1], or 2 σ(·) ∈ [0, 2] with `negative_eigenvalues`."""
        beta = torch.sigmoid(beta_logits)
        return 2 * beta if self.negative_eigenvalues else beta

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x), self.beta_proj(x)), self.gate(x)

    power_of_two_blocks = False

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        qkv_in, beta_logits, *decay = inputs
        qkv, conv_state = self._convolve(qkv_in, state)
        key_width = self.heads * self.state_k
        q, k, v = (
            heads_view(u, self.heads)
            for u in qkv.split([key_width, key_width, self.heads * self.state_v], dim=-1)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = self.write_strength(beta_logits)
        kernel = self._kernel_options(qkv.shape[1], state, boundaries, need_final)
        o, final, *chunk_states = self._kernel(q, k, v, beta, *decay, **kernel)
        if boundaries is not None:
            return o, self._states_entering_blocks(chunk_states[0], qkv_in, boundaries)
        return o, self._new_state(final, conv_state)

    def _kernel(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, **kernel: object
    ) -> tuple[Tensor, ...]:
        return delta_rule(q, k, v, beta, **kernel)

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out(self.norm(o).flatten(2) * F.silu(gate))

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked WY form per token and head, chunk C: β k kᵀ and q kᵀ tiles (4C·K), the
        triangular solve for U and W (C·(K + V)), scores times pseudo-values (2C·V), the
        chunk transition (2K²), and state reads and writes (6K·V); plus the conv, the L2
        norms and the gated output norm."""
        c = min(self.chunk_size, max(seq_len, 1))
        k, v = self.state_k, self.state_v
        kernel = self.heads * (4.0 * c * k + 3.0 * c * v + 2.0 * k * k + 6.0 * k * v)
        conv = 2.0 * self.conv.kernel_size * self.conv.channels
        return kernel + conv + 6.0 * self.heads * (2 * k + v)


@MIXERS.register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang et al., "Gated Delta Networks: Improving Mamba2 with Delta Rule",
    2025): DeltaNet with Mamba-2's scalar decay per head,

        α_t = exp(g_t),  g_t = −exp(A_log) · softplus(W_a x_t + b_Δ)
        S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ

    Init as Mamba-2's: A = exp(A_log) ~ U[A_min, A_max] per head, b_Δ = softplus⁻¹(Δ₀) with
    Δ₀ log-uniform in [dt_min, dt_max]. V defaults to 2 · d_model / heads (the paper's
    expand_v = 2). Everything else, `negative_eigenvalues` included, is DeltaNet's.
    """

    name = "gated_deltanet"

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
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"{self.name} needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0 < A_min <= A_max:
            raise ConfigError(f"{self.name} needs 0 < A_min <= A_max, got {A_min}, {A_max}")
        self.dt_min, self.dt_max, self.A_min, self.A_max = dt_min, dt_max, A_min, A_max
        self.decay_proj = nn.Linear(d_model, heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(heads))
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self._reset_structured()

    def init_weights(self, std: float, out_std: float) -> None:
        super().init_weights(std, out_std)
        self._reset_structured()

    @torch.no_grad()
    def _reset_structured(self) -> None:
        self.conv.reset_parameters()
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(self.A_min, self.A_max).log())
        dt = torch.empty_like(self.dt_bias).uniform_(math.log(self.dt_min), math.log(self.dt_max))
        dt = dt.exp().clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

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
