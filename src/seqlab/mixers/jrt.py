"""JRT-RNN's prefix linear attention (Arora et al., 2024, "Just read twice")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import CAUSAL_ONLY, Layout
from seqlab.mixers.base import check_input
from seqlab.mixers.common import check_conv_size, check_positive, head_dim, heads_view
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.prefix_linear_attention import prefix_linear_attention
from seqlab.registry import MIXERS

FEATURE_MAPS = ("taylor", "elu")
EPS = 1e-6


def taylor_features(x: Tensor) -> Tensor:
    """Based's second-order Taylor map of exp(qᵀk/√d): ``[..., d] -> [..., 1 + d + d²]``,
    ``φ(x) = [1, x / d^{1/4}, vec(x xᵀ) / (√2 · √d)]``, so that
    ``φ(q)ᵀφ(k) = 1 + qᵀk/√d + (qᵀk)²/(2d) ≥ 1/2``."""
    d = x.shape[-1]
    square = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, square], dim=-1)


@MIXERS.register("jrt")
class JRT(LinearRecurrence):
    """JRT-RNN prefix linear attention: a non-causal read of the first `prefix` tokens added to
    the state of a causal, normalised linear attention (Arora et al., 2024).

    With φ the feature map (Based's Taylor map by default), M = min(prefix, T) and
    separate encoder projections k^e, v^e of the prefix tokens (the public code's
    `proj_k_enc`, `proj_v_enc`):

        S_t = Σ_{j<M} φ(k^e_j) v^eᵀ_j + Σ_{s≤t} φ(k_s) v_sᵀ,   z_t likewise with 1 for v
        o_t = S_tᵀ φ(q_t) / (z_tᵀ φ(q_t) + ε),   y = W_out o

    Every position reads the whole encoder sum: positions < M read each other (and the
    tokens up to M − 1) non-causally, later positions are causal. q, k are `feature_dim` wide
    per head (φ: 1 + f + f² for taylor, f for elu + 1), v `d_model / heads`; the normaliser
    rides as a column of ones (`ops.prefix_linear_attention`, on the chunked linear-attention
    kernel), so the state is `[B, H, φ, V + 1]` plus the short conv's taps on q, k, v
    (`conv_size`; the encoder projections read x directly) and the count of tokens read.

    Decoding: the prefix must come in one call from `init_state` (a prefill of at least
    `prefix` tokens; the state then holds the encoder sum and the causal sum, and the
    continuation equals the full forward); a call that would start or end inside the prefix
    is a SeqlabError. A full forward shorter than `prefix` reads all its tokens
    non-causally. The mixer declares `noncausal_prefix = prefix`, which the conformance kit
    reads: its causality, split and decode checks apply past the prefix. Training it with
    the AR objective leaks the targets inside the prefix, so score only positions after it
    (MQAR's answers, with `prefix` = the context's length; the paper adds an MLM loss on the
    prefix, which seqlab does not have).
    """

    layouts = CAUSAL_ONLY

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        prefix: int = 16,
        feature_dim: int = 16,
        feature_map: str = "taylor",
        conv_size: int = 4,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ConfigError(f"{self.name} prefix must be an integer >= 0, got {prefix!r}")
        check_positive(self.name, feature_dim=feature_dim)
        if feature_map not in FEATURE_MAPS:
            raise ConfigError(
                f"{self.name} feature_map must be one of {', '.join(FEATURE_MAPS)}, "
                f"got {feature_map!r}"
            )
        check_conv_size(self.name, conv_size)
        self.prefix = self.noncausal_prefix = prefix
        self.feature_dim, self.feature_map = feature_dim, feature_map
        self.value_dim = head_dim(self.name, "model", d_model, heads)
        self.state_k = 1 + feature_dim + feature_dim**2 if feature_map == "taylor" else feature_dim
        self.state_v = self.value_dim + 1  # z rides in the last value column
        width = 2 * heads * feature_dim + d_model
        self.qkv = nn.Linear(d_model, width, bias=False)
        self.encoder = nn.Linear(d_model, heads * feature_dim + d_model, bias=False)
        self.conv = ShortConv(width, conv_size) if conv_size else None
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: LinearState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LinearState | None]:
        check_input(x, self.d_model)
        if not layout.is_causal:
            raise SeqlabError(f"{self.name} supports the causal layout only, got {layout}")
        steps = x.shape[1]
        encoded = min(self.prefix, steps) if self._tokens_read(state, steps) == 0 else 0
        qkv, conv_state = self._convolve(self.qkv(x), state)
        f = self.heads * self.feature_dim
        q, k, v = qkv.split([f, f, self.d_model], dim=-1)
        k_enc, v_enc = self.encoder(x[:, :encoded]).split([f, self.d_model], dim=-1)
        o, final = prefix_linear_attention(
            self._phi(q),
            self._phi(k),
            _with_ones(heads_view(v, self.heads)),
            self._phi(k_enc),
            _with_ones(heads_view(v_enc, self.heads)),
            scale=1.0,  # cancels in the normalisation
            initial_state=None if state is None else state.recurrent,
            output_final_state=state is not None,
            mode=self._mode(steps, state),
            chunk_size=self.chunk_size,
        )
        y = self._output(o, None)
        if state is None:
            return y, None
        conv = None if conv_state is None else conv_state.to(final.dtype)
        return y, LinearState(final, conv, state.offset + steps)

    def _tokens_read(self, state: LinearState | None, steps: int) -> int:
        """Tokens the state has read: 0 (none; the call holds the whole prefix) or at least
        `prefix`; any other call is refused (the rule in the class docstring)."""
        if state is None:
            return 0
        if state.offset is None:
            raise SeqlabError(f"{self.name}: the state has no token count; use init_state")
        low, high = int(state.offset.min()), int(state.offset.max())
        if low >= self.prefix:
            return low
        if high == 0 and steps >= self.prefix:
            return 0
        read = f"{low}" if low == high else f"{low}-{high}"
        raise SeqlabError(
            f"{self.name} reads its first prefix={self.prefix} tokens non-causally: give them "
            f"in one call from init_state (a prefill of at least {self.prefix} tokens) before "
            f"decoding; got {steps} token(s) after {read} read"
        )

    def _phi(self, u: Tensor) -> Tensor:
        """`[B, T, H · f]` -> the feature map per head `[B, T, H, φ]`."""
        u = heads_view(u, self.heads)
        return taylor_features(u) if self.feature_map == "taylor" else F.elu(u) + 1

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], None]:
        return (self.qkv(x),), None

    def _output(self, o: Tensor, gate: None) -> Tensor:
        """o `[B, T, H, V + 1]` -> the normalised output, projected `[B, T, d_model]`."""
        return self.out((o[..., :-1] / (o[..., -1:] + EPS)).flatten(2))

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LinearState:
        """The base's zero state and conv taps, with a count of tokens read (zeros `[B]`)."""
        state = super().init_state(batch_size, device=device, dtype=dtype)
        state.offset = torch.zeros(batch_size, dtype=torch.long, device=state.recurrent.device)
        return state

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel, the feature map, the normalisation, and the encoder sum
        (2 · φ · V per prefix token, spread over the sequence)."""
        encoder = 2.0 * self.heads * self.state_k * self.state_v * min(self.prefix, seq_len)
        phi = 3.0 * self.heads * self.state_k
        return super().mixing_flops(seq_len) + phi + encoder / max(seq_len, 1) + self.d_model


def _with_ones(v: Tensor) -> Tensor:
    """Values `[B, T, H, V]` with the normaliser's column of ones appended."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
