"""Hydra: the quasiseparable bidirectional mixer of Hwang et al., "Hydra: Bidirectional State
Space Models Through Generalized Matrix Mixers" (2024), on Mamba-2's SSD pieces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixer, ValueMap, check_input
from seqlab.mixers.common import (
    check_positive,
    check_range,
    dt_bias_init,
    head_dim,
    heads_view,
    selective_step,
    uniform_A_log,
)
from seqlab.mixers.mamba2 import ssd
from seqlab.mixers.short_conv import ShortConv
from seqlab.registry import MIXERS

# Hydra's features: x `[B, T, H, P]`; B, C `[B, T, 2, N]`; Δ, g `[B, T, 2, H]` (index 0 the
# forward direction, 1 the backward one); D(x) `[B, T, H]`.
Features = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def shift(y: Tensor) -> Tensor:
    """`[B, T, ...]` one step later in time: row t is row t − 1, row 0 zeros."""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)


def shifted_semiseparable(C: Tensor, B: Tensor, delta: Tensor, g: Tensor) -> Tensor:
    """The strictly lower triangular matrix of shift(SSD(·)), materialised (a reference):

        L_ts = C_{t−1}ᵀ B_s Δ_s exp(G_{t−1} − G_s)  for s < t, else 0,   G_t = Σ_{r≤t} g_r

    C, B `[B, T, N]` (one group, shared by the heads), Δ, g `[B, T, H]` -> `[B, H, T, T]`.
    """
    steps = C.shape[1]
    G = g.cumsum(1)
    lower = torch.ones(steps, steps, dtype=torch.bool, device=g.device).tril()[..., None]
    decay = torch.where(lower, G[:, :, None] - G[:, None, :], -torch.inf).exp()  # [B, T, S, H]
    semiseparable = torch.einsum("btn,bsn->bts", C, B)[..., None] * decay * delta[:, None]
    return shift(semiseparable).permute(0, 3, 1, 2)


def quasiseparable_matrix(B: Tensor, C: Tensor, delta: Tensor, g: Tensor, d: Tensor) -> Tensor:
    """Hydra's full T×T mixing matrix per head, materialised (the reference of `Hydra`):

        M = shift(SS⃗) + flip(shift(SS⃖ of the reversed sequence)) + diag(D(x))

    where the backward part's upper triangle is, for s > t,
    M_ts = C⃖_{t+1}ᵀ B⃖_s Δ⃖_s exp(Σ_{t+1≤r<s} g⃖_r). The shifts leave the diagonal to D(x)
    alone. B, C `[B, T, 2, N]`, Δ, g `[B, T, 2, H]`, d `[B, T, H]` -> `[B, H, T, T]`.
    """
    forward = shifted_semiseparable(C[:, :, 0], B[:, :, 0], delta[:, :, 0], g[:, :, 0])
    backward = shifted_semiseparable(*(u[:, :, 1].flip(1) for u in (C, B, delta, g))).flip(-2, -1)
    return forward + backward + torch.diag_embed(d.transpose(1, 2))


@MIXERS.register("hydra")
class Hydra(Mixer):
    """Hydra (Hwang et al., 2024): a quasiseparable matrix mixer, two SSD scans with untied
    B, C, Δ per direction plus a data-dependent diagonal; non-causal (bidirectional only).

        z, xBC, δ = W_in u                         δ: one per head and direction
        x, B⃗, C⃗, B⃖, C⃖ = SiLU(conv(xBC))           conv: depthwise, centred (⌊k/2⌋ each side)
        Δ⃗, g⃗ = step(δ⃗);  Δ⃖, g⃖ = step(δ⃖)            Δ = softplus(δ + b_Δ), g = Δ·A
        y = shift(SSD⃗(x)) + flip(shift(SSD⃖(flip x))) + D(x) ⊙ x,   D(x) = W_D x + D
        out = W_out (RMSNorm(y) ⊙ SiLU(z))

    SSD is Mamba-2's scan (`mamba2.ssd`: h_t = exp(g_t) h_{t−1} + B_t (Δ_t x_t)ᵀ, y_t = h_tᵀ C_t)
    and shift moves its output one step later (y_0 = 0), so each direction's semiseparable
    matrix loses its diagonal and the token's own value enters once, through D(x). As a
    matrix (`quasiseparable_matrix`), y_t = Σ_s M_ts x_s per head with
    M_ts = C⃗_{t−1}ᵀ B⃗_s Δ⃗_s exp(Σ_{s<r≤t−1} g⃗_r) for s < t, D(x)_t for s = t, and
    C⃖_{t+1}ᵀ B⃖_s Δ⃖_s exp(Σ_{t+1≤r<s} g⃖_r) for s > t.
    Shared by the directions (as in the reference code): x, the gate z, the conv, A and b_Δ;
    per direction: B, C (one group each) and δ. The two scans run as one batch of 2B rows.
    Shapes: u `[B, T, d_model]`; x, y `[B, T, H, P]` (H·P = d_inner = expand · d_model); B, C
    `[B, T, d_state]` per direction; Δ, g, D(x) `[B, T, H]`.
    Init (the reference code's): A = 1 in every head (A_min = A_max = 1), b_Δ = softplus⁻¹(Δ₀)
    with Δ₀ log-uniform in [dt_min, dt_max], D = 1, the conv as ShortConv; the gate norm is
    applied before the gate (norm_before_gate=True, unlike `mamba2`).

    A non-causal mixer cannot decode: `state_kind` is "none", `init_state` and a forward from
    a state raise, and `state_size` is 0. The cheap bidirectional option of every recurrent
    mixer (mamba2 forward plus mamba2 over the reversed tokens, tied weights: `scan_in_layout`)
    stays available under the `bidirectional` layout of those mixers.
    """

    layouts = frozenset({LayoutKind.BIDIRECTIONAL})
    sequence_parallel_refusal = (
        "it is bidirectional only, and sequence parallelism trains the causal layout (ar)"
    )
    state_kind = "none"
    linear_in_values = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand: int = 2,
        d_state: int = 64,
        conv_size: int = 7,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        A_min: float = 1.0,
        A_max: float = 1.0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        check_positive(
            "hydra",
            heads=heads,
            expand=expand,
            d_state=d_state,
            conv_size=conv_size,
            chunk_size=chunk_size,
        )
        if conv_size % 2 == 0 or chunk_size & (chunk_size - 1):
            raise ConfigError(
                "hydra needs an odd conv_size (a centred window) and a power-of-two chunk_size, "
                f"got {conv_size}, {chunk_size}"
            )
        check_range("hydra", "dt_min", dt_min, "dt_max", dt_max)
        check_range("hydra", "A_min", A_min, "A_max", A_max)
        self.d_model, self.heads, self.chunk_size = d_model, heads, chunk_size
        self.d_inner, self.d_state = expand * d_model, d_state
        self.head_dim = head_dim("hydra", "inner", self.d_inner, heads)
        conv_width = self.d_inner + 4 * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_width + 2 * heads, bias=False)
        self.conv = ShortConv(conv_width, conv_size, activation="silu", causal=False)
        self.A_log = nn.Parameter(uniform_A_log(heads, A_min, A_max))
        self.dt_bias = nn.Parameter(dt_bias_init(heads, dt_min, dt_max))
        self.D = nn.Parameter(torch.ones(heads))
        self.D_proj = nn.Linear(self.d_inner, heads, bias=False)
        self.norm = nn.RMSNorm(self.d_inner, eps=1e-5)
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: None = None,
        *,
        layout: Layout = Layout.BIDIRECTIONAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        check_input(x, self.d_model)
        if state is not None or layout.kind is not LayoutKind.BIDIRECTIONAL:
            raise SeqlabError(
                "hydra is non-causal: it runs only the bidirectional layout, without a state, "
                f"got the {layout.kind} layout" + ("" if state is None else " with a state")
            )
        z, features = self._features(x)
        return self._output(self._mix(*features), z), None

    def _features(self, u: Tensor) -> tuple[Tensor, Features]:
        """u `[B, T, d_model]` -> (z `[B, T, d_inner]`, (x, B, C, Δ, g, D(x)); see `Features`)."""
        n = self.d_state
        z, xbc, dt = self.in_proj(u).split(
            [self.d_inner, self.d_inner + 4 * n, 2 * self.heads], dim=-1
        )
        x, bc = self.conv(xbc)[0].split([self.d_inner, 4 * n], dim=-1)
        B, C = bc.unflatten(-1, (2, 2, n)).unbind(-2)  # order: B⃗, C⃗, B⃖, C⃖
        delta, g = selective_step(dt.unflatten(-1, (2, self.heads)), self.dt_bias, self.A_log)
        d = self.D_proj(x) + self.D
        return z, (heads_view(x, self.heads), B, C, delta, g, d)

    def _mix(
        self,
        x: Tensor,
        B: Tensor,
        C: Tensor,
        delta: Tensor,
        g: Tensor,
        d: Tensor,
        mode: str = "chunk",
    ) -> Tensor:
        """y = shift(SSD⃗(x)) + flip(shift(SSD⃖(flip x))) + D(x) ⊙ x `[B, T, H, P]`: both
        scans in one kernel call over 2B rows (the backward rows reversed in time); `mode`
        "recurrent" runs the kernel's step-by-step reference."""

        def both(u: Tensor) -> Tensor:
            return torch.cat([u[:, :, 0], u[:, :, 1].flip(1)])

        q, k = (both(u)[:, :, None].expand(-1, -1, self.heads, -1) for u in (C, B))
        values = torch.cat([x, x.flip(1)])
        y, _ = ssd(q, k, values, both(delta), both(g), mode=mode, chunk_size=self.chunk_size)
        y = shift(y)
        batch = x.shape[0]
        return y[:batch] + y[batch:].flip(1) + d[..., None] * x

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        return self.out(self.norm(y.flatten(2)) * F.silu(z))

    def reference(self, u: Tensor) -> Tensor:
        """The whole mixer through the materialised T×T matrix (`quasiseparable_matrix`): the
        plain reference of `forward` (float64 in the tests)."""
        check_input(u, self.d_model)
        z, (x, B, C, delta, g, d) = self._features(u)
        y = torch.einsum("bhts,bshp->bthp", quasiseparable_matrix(B, C, delta, g, d), x)
        return self._output(y, z)

    def _value_map(self, u: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """The values x (after the conv), the forward's mixed output, and the step-by-step
        kernel as a function of the values, with B, C, Δ and D(x) fixed. The matrix is full:
        the mixing of the bidirectional layout, not a causal one."""
        _, (x, *gates) = self._features(u)

        def value_map(values: Tensor) -> Tensor:
            return self._mix(values, *gates, mode="recurrent")

        return x, self._mix(x, *gates), value_map

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        raise SeqlabError(
            "hydra is non-causal and has no decode state: every output reads the whole "
            "sequence, so it runs the bidirectional layout on complete sequences only"
        )

    def state_size(self, seq_len: int) -> int:
        """0: no state is carried (a non-causal mixer cannot decode token by token)."""
        return 0

    def mixing_flops(self, seq_len: int) -> float:
        """Two chunked SSD scans (K = d_state, V = headdim, chunk C: 2C(K + V) + 4KV per
        head and token each), the centred conv, and D(x) ⊙ x, the norm and the gate (~12 per
        inner channel)."""
        c = min(self.chunk_size, max(seq_len, 1))
        k, v = self.d_state, self.head_dim
        scans = 2 * self.heads * (2.0 * c * (k + v) + 4.0 * k * v)
        return scans + 2.0 * self.conv.kernel_size * self.conv.channels + 12.0 * self.d_inner
