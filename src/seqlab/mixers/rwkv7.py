"""RWKV-7 "Goose" (Peng et al., 2025): the generalised delta rule with a per-channel decay, an
in-context learning rate and token shift, on `ops.generalized_delta_rule`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import (
    check_input,
    check_scan_layout,
    keep_init,
    scan_in_layout,
)
from seqlab.mixers.common import check_positive, group_norm, head_dim, heads_view
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.ops.generalized_delta_rule import generalized_delta_rule
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import conv_history, current_shard, shard_entry

# The decay w = exp(-e^{-0.5} σ(z)) lies in (exp(-e^{-0.5}), 1) ≈ (0.545, 1).
DECAY_SCALE = math.exp(-0.5)
# The six token-shift mixes μ, in this order: receptance, decay, key, value, iclr, gate.
SHIFT_COMPONENTS = ("r", "w", "k", "v", "a", "g")
# Their init exponents: μ_c = 1 − (i / C)^(p_c · (1 − layer / n_layers)).
SHIFT_POWERS = (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)


def lora_rank(factor: float, d_model: int, head_size: int = 64) -> int:
    """The reference code's LoRA width, max(32, round(factor · √d_model / 32) · 32)."""
    return max(32, int(round(factor * d_model**0.5 * head_size / 64 / 32) * 32))


class LoRA(nn.Module):
    """z = W_up act(W_down x) (+ bias): RWKV-7's low-rank data-dependent parameters. Init as
    the reference code: W_down zero, W_up orthogonal with gain 0.1 (· √(rank/out) when the rank
    is wider), the bias given (kept by the model-wide init, as are both weights)."""

    def __init__(
        self, width: int, rank: int, activation: str | None, bias: Tensor | None = None
    ) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=bias is not None)
        self.activation = activation
        with torch.no_grad():
            nn.init.zeros_(self.down.weight)
            gain = math.sqrt(rank / width) if rank > width else 1.0
            nn.init.orthogonal_(self.up.weight, gain=0.1 * gain)
            keep_init(self.down.weight, self.up.weight)
            if bias is not None:
                self.up.bias.copy_(bias)
                keep_init(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.down(x)
        if self.activation == "tanh":
            hidden = torch.tanh(hidden)
        elif self.activation == "sigmoid":
            hidden = torch.sigmoid(hidden)
        return self.up(hidden)


@MIXERS.register("rwkv7")
class RWKV7(LinearRecurrence):
    """RWKV-7 "Goose" (Peng et al., 2025): a matrix state written by the generalised delta rule,
    with a per-channel data-dependent decay and a per-channel in-context learning rate.

    From "RWKV-7 Goose with Expressive Dynamic State Evolution" and its reference code, with
    the token shift x_c = x_t + μ_c ⊙ (x_{t−1} − x_t) for c ∈ {r, w, k, v, a, g}:

        r, k, v = W_r x_r, W_k x_k, W_v x_v
        w_t = exp(−e^{−0.5} σ(w_0 + W_w2 tanh(W_w1 x_w)))   ∈ (0.545, 1) per channel
        a_t = σ(a_0 + W_a2 W_a1 x_a)                          in-context learning rate
        g_t = W_g2 σ(W_g1 x_g)                                output gate
        κ̂_t = normalize_head(k_t ⊙ k_k),   k̃_t = k_t ⊙ (1 + (a_t − 1) ⊙ k_a)
        S_t = diag(w_t) S_{t−1} − (κ̂_t ⊙ a_t)(κ̂_tᵀ S_{t−1}) + k̃_t v_tᵀ,   o_t = S_tᵀ r_t
        y = W_o((GroupNorm_head(o) + (Σ_head r ⊙ k̃ ⊙ r_k) v) ⊙ g)

    (`ops.generalized_delta_rule` with scale 1, a = −κ̂ and b = κ̂ ⊙ a.) Test-time regression
    view: online regression of v on κ̂ with a per-channel learning rate and forgetting. One
    gradient step on ½‖Sᵀκ̂_t − v_t‖² from S_{t−1}, preconditioned by diag(a_t), with per-row
    (per key channel) weight decay 1 − w_t, gives diag(w_t) S − (a_t ⊙ κ̂_t)κ̂_tᵀS +
    (a_t ⊙ κ̂_t) v_tᵀ; RWKV-7 writes with k̃ instead of a ⊙ κ̂ (the two agree for
    k_a = 1 and a unit k). The bonus term (Σ r ⊙ k̃ ⊙ r_k) v is a direct read of the current token.

    Shapes: x `[B, T, d_model]`; r, k, κ̂, k̃, w, a `[B, T, H, K]` and v, o `[B, T, H, V]` with
    K = V = d_model / heads; S `[B, H, K, V]`. State: S and the last input token `[B, 1,
    d_model]` for the token shift (the `conv` slot of `LinearState`: a token shift is a 2-tap
    depthwise conv with fixed taps (1, −1) mixed by the learned μ, so it is not a `ShortConv`,
    whose taps would be learned).

    Init (the reference code): μ ramps over channels, from 1 − (i/C)^p at layer 0 towards 0
    (no shift) at the last layer; decay bias w_0 = −6 + 6 (i/(C−1))^(1 + (layer/(L−1))^0.3) +
    0.5 + 2.5 ζ_i, a spectrum from slow to fast channels with a zigzag ζ within each head;
    a_0 = −0.19 + 0.3 ζ + 0.4 λ (λ a linear ramp over channels); k_k = 0.71 − 0.1 λ,
    k_a = 1.02, r_k = −0.04; LoRA down-projections zero and up-projections orthogonal with
    gain 0.1; W_r, W_v ~ U(±0.5/√C), W_k ~ U(±0.05/√C); GroupNorm eps = K · 1e-5 and weight
    ((layer + 1)/L)^0.7. All kept by the model-wide init, except W_o: the reference zeroes it,
    here it takes seqlab's output-projection init (a zero W_o makes the layer's output, and so
    every gradient check of the layer alone, identically zero at init). LoRA ranks default to the
    reference's max(32, round(f √d_model / 32) · 32) with f = 2.5 (decay, iclr) and 5 (gate).

    Left out: the value residual (v mixed with layer 0's v through a σ(LoRA) gate) needs a
    tensor passed between layers, which seqlab's mixer interface does not carry.
    Other layouts: the token shift is always the forward one (in block diffusion a noised
    block's first token shifts from the clean token before it); the reversed scans reuse the
    same r, w, k, v, a, b.
    Mixing matrix (`mixing`): the kernel's map of v; the bonus term is a diagonal one the
    layer adds after the GroupNorm, so it is not part of it.
    Sequence parallelism: the transition diag(w_t) + a_t b_tᵀ acts on the key side, so the
    shard runs `LinearRecurrence._sharded_recur` (identity-widened values); the token shift
    takes the previous rank's last token.
    """

    linear_in_values = True
    sequence_parallel = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        n_layers: int = 2,
        layer: int = 0,
        decay_rank: int | None = None,
        iclr_rank: int | None = None,
        gate_rank: int | None = None,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        given = {"decay_rank": decay_rank, "iclr_rank": iclr_rank, "gate_rank": gate_rank}
        factors = {"decay_rank": 2.5, "iclr_rank": 2.5, "gate_rank": 5.0}
        ranks = {
            name: lora_rank(factors[name], d_model) if rank is None else rank
            for name, rank in given.items()
        }
        check_positive(self.name, n_layers=n_layers, **ranks)
        self.state_k = self.state_v = head_dim(self.name, "model", d_model, heads)
        C, N = d_model, self.state_k
        depth = layer / n_layers
        ramp = layer / max(n_layers - 1, 1)
        channel = torch.arange(C, dtype=torch.get_default_dtype())
        linear = channel / max(C - 1, 1) - 0.5
        centred = (channel % N - (N - 1) / 2) / max((N - 1) / 2, 1)
        zigzag = centred * centred.abs()
        powers = torch.tensor(SHIFT_POWERS).unsqueeze(-1) * (1.0 - depth)
        self.mu = nn.Parameter(1.0 - (channel / C).pow(powers))  # [6, C]
        decay_bias = -6 + 6 * (channel / max(C - 1, 1)).pow(1 + ramp**0.3) + 0.5 + 2.5 * zigzag
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.decay = LoRA(C, ranks["decay_rank"], "tanh", decay_bias)
        self.iclr = LoRA(C, ranks["iclr_rank"], None, -0.19 + 0.3 * zigzag + 0.4 * linear)
        self.gate = LoRA(C, ranks["gate_rank"], "sigmoid")
        self.k_k = nn.Parameter(0.71 - 0.1 * linear)
        self.k_a = nn.Parameter(torch.full((C,), 1.02))
        self.r_k = nn.Parameter(torch.full((heads, N), -0.04))
        self.norm = nn.GroupNorm(heads, C, eps=N * 1e-5)
        self.out = nn.Linear(C, d_model, bias=False)
        with torch.no_grad():
            for proj, bound in ((self.receptance, 0.5), (self.key, 0.05), (self.value, 0.5)):
                nn.init.uniform_(proj.weight, -bound / C**0.5, bound / C**0.5)
            self.norm.weight.fill_(((layer + 1) / n_layers) ** 0.7)
        keep_init(self.receptance.weight, self.key.weight, self.value.weight)

    power_of_two_blocks = False

    def forward(
        self,
        x: Tensor,
        state: LinearState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LinearState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, self.name)
        shard = current_shard()
        if shard is not None:
            shard_entry(self.name, state, layout)
            previous = torch.cat([conv_history(shard, x, 1, self.name), x[:, :-1]], dim=1)
            inputs, extras = self._project(x, previous)
            return self._output(self._sharded_recur(inputs, state, layout), extras), None
        inputs, extras = self._project(x, self._previous_tokens(x, state, layout))
        o, new_state = scan_in_layout(
            self._recur, inputs, state, layout, self.init_state, self._block_forward
        )
        if new_state is not None:
            # A copy, not a view: a view would keep the whole prefill alive in the state.
            new_state.conv = x[:, -1:].to(new_state.recurrent.dtype, copy=True)
        return self._output(o, extras), new_state

    def _previous_tokens(self, x: Tensor, state: LinearState | None, layout: Layout) -> Tensor:
        """x_{t−1} for every t `[B, T, d_model]`: the carried last token (zeros without a
        state) before the first. In block diffusion ([x_t ; x_0]) each half shifts on its own
        and the first token of noised block j reads the clean token before block j."""
        first = x.new_zeros(x.shape[0], 1, x.shape[2]) if state is None else state.conv
        previous = torch.cat([first.to(x.dtype), x[:, :-1]], dim=1)
        length, odd = divmod(x.shape[1], 2)
        if layout.kind is not LayoutKind.BLOCK_DIFFUSION or odd:
            return previous
        noised, clean = previous[:, :length], F.pad(x[:, length:-1], (0, 0, 1, 0))
        block_start = torch.arange(length, device=x.device) % layout.block_size == 0
        return torch.cat([torch.where(block_start[:, None], clean, noised), clean], dim=1)

    def _project(
        self, x: Tensor, previous: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor]]:
        """Token shift and projections: the kernel's (r, k̃, v, log w, a, b) `[B, T, H, ·]` and
        (gate `[B, T, d_model]`, bonus `[B, T, H, V]`). `previous`: x_{t−1} (zeros before x)."""
        if previous is None:
            previous = F.pad(x, (0, 0, 1, 0))[:, :-1]
        mixed = torch.addcmul(x.unsqueeze(2), (previous - x).unsqueeze(2), self.mu)
        x_r, x_w, x_k, x_v, x_a, x_g = mixed.unbind(2)
        r, k, v = (
            heads_view(proj(u), self.heads)
            for proj, u in ((self.receptance, x_r), (self.key, x_k), (self.value, x_v))
        )
        log_w = heads_view(-DECAY_SCALE * torch.sigmoid(self.decay(x_w)), self.heads)
        iclr = heads_view(torch.sigmoid(self.iclr(x_a)), self.heads)
        removal = F.normalize(k * heads_view(self.k_k, self.heads), dim=-1)
        k = k * (1 + (iclr - 1) * heads_view(self.k_a, self.heads))
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v
        return (r, k, v, log_w, -removal, removal * iclr), (self.gate(x_g), bonus)

    def _output(self, o: Tensor, extras: tuple[Tensor, Tensor]) -> Tensor:
        gate, bonus = extras
        return self.out((group_norm(self.norm, o) + bonus.flatten(2)) * gate)

    def _init_conv_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The token shift's previous input `[B, 1, d_model]` (zeros before the first)."""
        return torch.zeros(batch_size, 1, self.d_model, device=device, dtype=dtype)

    def state_size(self, seq_len: int) -> int:
        """heads · K · V for the matrix state plus the last token (d_model) for the shift."""
        return super().state_size(seq_len) + self.d_model

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """The kernel's arguments (r, k, v, log w, a, b) are `_project`'s, unchanged; the
        shift's token passes through the scans untouched (`forward` sets it after them)."""
        return inputs, None if state is None else state.conv

    def _kernel(self, *inputs: Tensor, **options: object) -> tuple[Tensor, ...]:
        """The generalised delta rule with RWKV-7's unscaled read."""
        return generalized_delta_rule(*inputs, scale=1.0, **options)

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel per token and head, chunk C, K = V: the four decayed score tiles
        A_ab, A_ak, B_qb, B_qk (8C·K, full tiles), A_ak V (2C·V), the triangular solve for
        [W, U~] (C·(K + V)), B_qb W, B_qb U~ and B_qk V (2C·K + 4C·V), the chunk transition
        (2K²) and inflow (4K·V), the read of the entering state (2K·V) and the chunk-to-chunk
        state update (2K²·V / C); plus the token shift, the key norm, the bonus term and the
        GroupNorm (elementwise, ~6 d_model + 10 K per head)."""
        c = min(self.chunk_size, max(seq_len, 1))
        k = v = self.state_k
        kernel = 11.0 * c * k + 7.0 * c * v + 2.0 * k * k + 6.0 * k * v + 2.0 * k * k * v / c
        return self.heads * (kernel + 10.0 * k) + 6.0 * self.d_model
