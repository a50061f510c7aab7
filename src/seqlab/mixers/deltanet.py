"""DeltaNet (Yang et al., 2024): linear attention with the delta rule, on `ops.delta_rule`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.mixers.common import check_bool, check_positive, head_dim, heads_view
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.delta_rule import delta_rule
from seqlab.registry import MIXERS


@MIXERS.register("deltanet")
class DeltaNet(LinearRecurrence):
    """DeltaNet (Yang et al., 2024): linear attention whose state is written by the delta
    rule, which replaces the value stored under each key instead of adding to it.

    From "Parallelizing Linear Transformers with the Delta Rule over Sequence Length":

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

    linear_in_values = True
    sequence_parallel = True
    plain_read = True

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
        self.gate = self.output_gate(value_width)
        self.norm = nn.RMSNorm(self.state_v, eps=1e-5)
        self.out = nn.Linear(value_width, d_model, bias=False)

    def write_strength(self, beta_logits: Tensor) -> Tensor:
        """β = σ(·) ∈ [0, 1], or 2 σ(·) ∈ [0, 2] with `negative_eigenvalues`."""
        beta = torch.sigmoid(beta_logits)
        return 2 * beta if self.negative_eigenvalues else beta

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x), self.beta_proj(x)), self.gate(x)

    power_of_two_blocks = False

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """Unit q and k, v, β (and the decay logits of a subclass)."""
        qkv_in, beta_logits, *decay = inputs
        qkv, conv_state = self._convolve(qkv_in, state)
        key_width = self.heads * self.state_k
        q, k, v = (
            heads_view(u, self.heads)
            for u in qkv.split([key_width, key_width, self.heads * self.state_v], dim=-1)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return (q, k, v, self.write_strength(beta_logits), *decay), conv_state

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
