"""Gated linear attention (Yang et al., 2024) on the gated linear attention kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import keep_init
from seqlab.mixers.common import check_conv_size, check_positive, group_norm, head_dim, heads_view
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.registry import MIXERS


@MIXERS.register("gla")
class GLA(LinearRecurrence):
    """Gated linear attention (Yang et al., 2024): linear attention with a data-dependent
    decay per key channel, a low-rank decay gate and a swish output gate.

    From "Gated Linear Attention Transformers with Hardware-Efficient Training":

        α_t = sigmoid(W_2 W_1 x_t + b)^(1/τ),  τ = 16   (rank-16 gate; g_t = logsigmoid(·)/τ)
        S_t = diag(α_t) S_{t−1} + k_t v_tᵀ,  o_t = S_tᵀ q_t / √K
        y = W_out(swish(W_r x) ⊙ GroupNorm_H(o))

    Shapes: q, k, g `[B, T, H, K]` with K = expand_k · d_model / heads (the paper's 0.5);
    v `[B, T, H, V]` with V = expand_v · d_model / heads (1). The normaliser τ keeps the decays
    near 1 and slow to move (a decay of 0.5 needs b ≈ −11). GroupNorm has one group per head.

    Two choices beyond the paper make the layer learn local structure quickly (the paper's
    layer does not learn the 2-layer periodic-copy test in 150 steps): `conv_size` > 0 puts a
    short causal conv (with SiLU) on q, k and v (fla's `use_short_conv`; 0 disables it), and
    the gate bias b is initialised so the zero-input decays σ(b)^(1/τ) span 0.1 … 0.99 over
    each head's key channels, multi-scale as in RetNet, instead of all ≈ 0.96 (b = 0).
    """

    linear_in_values = True
    sequence_parallel = True
    plain_read = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_rank: int = 16,
        gate_normalizer: float = 16.0,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(self.name, gate_rank=gate_rank)
        check_conv_size(self.name, conv_size)
        if not gate_normalizer > 0:
            raise ConfigError(f"gla gate_normalizer must be positive, got {gate_normalizer!r}")
        self.state_k = head_dim(self.name, "key", expand_k * d_model, heads)
        self.state_v = head_dim(self.name, "value", expand_v * d_model, heads)
        self.gate_normalizer = gate_normalizer
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.qkv = nn.Linear(d_model, 2 * key_width + value_width, bias=False)
        self.conv = ShortConv(2 * key_width + value_width, conv_size) if conv_size else None
        self.decay_down = nn.Linear(d_model, gate_rank, bias=False)
        self.decay_up = nn.Linear(gate_rank, key_width)
        self.gate = self.output_gate(value_width)
        self.norm = nn.GroupNorm(heads, value_width)
        self.out = nn.Linear(value_width, d_model, bias=False)
        with torch.no_grad():
            self.decay_up.bias.copy_(self.zero_input_decay_bias())
        keep_init(self.decay_up.bias)

    def zero_input_decay_bias(self) -> Tensor:
        """The gate bias b `[H·K]` such that the decay at zero input, sigmoid(b)^(1/τ), runs
        from 0.1 to 0.99 over each head's key channels (σ(b) = α^τ, b = logit(α^τ))."""
        alpha = torch.linspace(0.1, 0.99, self.state_k, dtype=torch.float64)
        bias = torch.logit((alpha.log() * self.gate_normalizer).exp())
        return bias.repeat(self.heads)

    def log_decay(self, x: Tensor) -> Tensor:
        """g = logsigmoid(W_2 W_1 x + b) / τ `[B, T, H·K]`, in (−∞, 0)."""
        return F.logsigmoid(self.decay_up(self.decay_down(x))) / self.gate_normalizer

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return (self.qkv(x), self.log_decay(x)), self.gate(x)

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        qkv_in, g = inputs
        qkv, conv_state = self._convolve(qkv_in, state)
        key_width = self.heads * self.state_k
        q, k, v = qkv.split([key_width, key_width, self.heads * self.state_v], -1)
        return tuple(heads_view(u, self.heads) for u in (q, k, v, g)), conv_state

    def _output(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out(F.silu(gate) * group_norm(self.norm, o))

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel and conv, the per-key decay factors on q and k (~8K per token
        and head), the log-sigmoid gate, group norm and the swish gate."""
        width = self.heads * self.state_v
        return super().mixing_flops(seq_len) + 8.0 * self.heads * self.state_k + 12.0 * width
