"""Linear attention (Katharopoulos et al., 2020) on the gated linear attention kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.mixers.common import check_bool, check_conv_size, head_dim, heads_view
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.registry import MIXERS


@MIXERS.register("linear_attention")
class LinearAttention(LinearRecurrence):
    """Linear attention (Katharopoulos et al., 2020): softmax replaced by a positive feature
    map φ, so that attention runs as a recurrence on a matrix state.

    From "Transformers are RNNs":

        φ(x) = elu(x) + 1,  S_t = S_{t−1} + φ(k_t) v_tᵀ,  z_t = z_{t−1} + φ(k_t)
        o_t = S_tᵀ φ(q_t) / (z_tᵀ φ(q_t) + ε)     (`normalize`; without it o_t = S_tᵀ φ(q_t)/√K)
        y = W_out o

    Shapes: q, k `[B, T, H, K]`, v `[B, T, H, V]` with K = V = d_model / heads. The normaliser
    rides in the same kernel call as an extra value column of ones, so the state is
    `[B, H, K, V + 1]` (z in the last column). φ > 0 keeps the denominator positive; ε = 1e-6.

    `conv_size` > 0 puts a short causal conv (with SiLU) on q, k and v, fla's
    `use_short_conv`: without decay or positions the paper's layer sees the prefix as a bag of
    tokens, and the conv gives it the local order (with the default 4 the 2-layer periodic-copy
    test learns; `conv_size: 0` is the paper's layer exactly).
    """

    linear_in_values = True
    sequence_parallel = True
    plain_read = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        normalize: bool = True,
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_bool(self.name, normalize=normalize)
        check_conv_size(self.name, conv_size)
        self.normalize = normalize
        self.state_k = head_dim(self.name, "model", d_model, heads)
        self.state_v = self.state_k + int(normalize)  # z rides in the last value column
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = ShortConv(3 * d_model, conv_size) if conv_size else None
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], None]:
        return (self.qkv(x),), None

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """φ(q), φ(k) and v, each `[B, T, H, K]`."""
        qkv, conv_state = self._convolve(inputs[0], state)
        q, k, v = (heads_view(u, self.heads) for u in qkv.chunk(3, dim=-1))
        return (F.elu(q) + 1, F.elu(k) + 1, v), conv_state

    def _kernel(self, q: Tensor, k: Tensor, v: Tensor, **options: object) -> tuple[Tensor, ...]:
        """The kernel, with the normaliser's column of ones after the values."""
        if self.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return gated_linear_attention(q, k, v, scale=self._query_scale(), **options)

    def _query_scale(self) -> float:
        """1 with the normaliser (it cancels), else 1/√K."""
        return 1.0 if self.normalize else self.state_k**-0.5

    def _mixed(self, o: Tensor) -> Tensor:
        """o `[B, T, H, V + 1]` (with `normalize`) -> the normalised output `[B, T, H, V]`."""
        if self.normalize:
            return o[..., :-1] / (o[..., -1:] + 1e-6)
        return o

    def _output(self, o: Tensor, gate: None) -> Tensor:
        return self.out(self._mixed(o).flatten(2))

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel (normaliser column included) and conv, φ and the division."""
        return super().mixing_flops(seq_len) + 4.0 * self.d_model
