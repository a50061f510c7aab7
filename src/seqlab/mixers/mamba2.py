"""Mamba-2: the SSD block of Dao & Gu, "Transformers are SSMs" (2024), run on the gated
linear attention kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.common import (
    check_bool,
    check_positive,
    check_range,
    dt_bias_init,
    head_dim,
    heads_view,
    selective_step,
    uniform_A_log,
)
from seqlab.mixers.linear_recurrence import LinearRecurrence, LinearState
from seqlab.mixers.short_conv import ShortConv
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.registry import MIXERS


def signed_log_decay(log_decay: Tensor) -> tuple[Tensor, Tensor]:
    """For a = 2 exp(log_decay) − 1 ∈ (−1, 1], return (log |a|, sign a ∈ {−1, +1}).

    log |a| is log1p(2 expm1(·)) for a > 0 (exact near a = 1, where small steps live) and
    log(−a) for a < 0; |a| is floored at the dtype's smallest normal so a = 0 stays finite.
    """
    m = 2 * torch.expm1(log_decay)  # a − 1 ∈ (−2, 0]
    positive = m > -1
    tiny = torch.finfo(m.dtype).tiny
    log_abs = torch.where(
        positive,
        torch.log1p(torch.where(positive, m, 0.0)),
        torch.log(torch.where(positive, 1.0, -1 - m).clamp_min(tiny)),
    )
    return log_abs, torch.where(positive, 1.0, -1.0).to(m.dtype)


def signed_gla(
    q: Tensor, k: Tensor, v: Tensor, log_abs: Tensor, sign: Tensor, **kernel: object
) -> tuple[Tensor, ...]:
    """`gated_linear_attention` with scalar decays a_t = sign_t · exp(log_abs_t) of either sign.

    With σ_t = Π_{r≤t} sign_r (±1, exact) the products of decays split as
    Π_{s<r≤t} a_r = σ_t σ_s exp(G_t − G_s), so the kernel on q' = σ q, k' = σ k with the
    log-space decay log |a| holds S'_t = σ_t S_t. Since σ_0 = 1 the initial state passes
    unchanged, and the final state is σ_T S'_T (chunk states likewise: the state entering chunk
    j is σ_{jC−1} S'_{jC−1}). Shapes as the kernel's; log_abs, sign `[B,T,H]`.
    """
    sigma = sign.cumprod(dim=1)
    o, final, *chunk_states = gated_linear_attention(
        q * sigma[..., None].to(q.dtype), k * sigma[..., None].to(k.dtype), v, log_abs, **kernel
    )
    if final is not None:
        final = final * sigma[:, -1, :, None, None].to(final.dtype)
    if not chunk_states:
        return o, final
    chunk = kernel["chunk_size"]
    before = sigma[:, chunk - 1 :: chunk][:, : chunk_states[0].shape[1] - 1]
    before = torch.cat([torch.ones_like(sigma[:, :1]), before], dim=1)
    return o, final, chunk_states[0] * before[..., None, None].to(chunk_states[0].dtype)


def ssd(
    C: Tensor,
    B: Tensor,
    x: Tensor,
    delta: Tensor,
    log_decay: Tensor,
    *,
    signed: bool = False,
    **kernel: object,
) -> tuple[Tensor, ...]:
    """The SSD recurrence (state space duality, Dao & Gu 2024) on the gated linear attention
    kernel, per head:

        h_t = a_t h_{t−1} + B_t (Δ_t x_t)ᵀ,   y_t = h_tᵀ C_t,   a_t = exp g_t
        (signed: a_t = 2 exp g_t − 1, see `signed_gla`)

    i.e. y_t = Σ_{s≤t} C_tᵀ B_s (Π_{s<r≤t} a_r) Δ_s x_s: q = C, k = B, v = Δ·x, scale 1.
    C, B `[B, T, H, N]`, x `[B, T, H, P]`, Δ and g `[B, T, H]`; `kernel`: the state and mode
    options of `gated_linear_attention`. Returns (y `[B, T, H, P]`, the kernel's states...).
    """
    v = x * delta[..., None]
    kernel = {"scale": 1.0, **kernel}
    if signed:
        return signed_gla(C, B, v, *signed_log_decay(log_decay), **kernel)
    return gated_linear_attention(C, B, v, log_decay, **kernel)


@MIXERS.register("mamba2")
class Mamba2(LinearRecurrence):
    """Mamba-2 (Dao & Gu, 2024): the SSD block, a selective SSM with a scalar decay per head,
    run on the gated linear attention kernel.

    B and C shared by all heads (or, with `groups` = G, by each of G consecutive groups of
    heads):

        z, xBC, δ = W_in u;  x, B, C = SiLU(conv(xBC));  Δ = softplus(δ + b_Δ)     per head
        h_t = exp(Δ_t A) h_{t−1} + B_t (Δ_t x_t)ᵀ,  y_t = h_tᵀ C_t + D x_t
        out = W_out RMSNorm(y ⊙ SiLU(z))

    The recurrence is `gated_linear_attention` with q = C, k = B, v = Δ·x, scalar log decay
    g = Δ·A per head and scale 1. Shapes: x, z, y `[B, T, H, P]` (H·P = d_inner =
    expand · d_model); B, C `[B, T, G · d_state]`; Δ `[B, T, H]`; h `[B, H, d_state, P]`.
    The gate follows Mamba-2's code (`RMSNormGated` with norm_before_gate=False): the norm is
    applied to y ⊙ SiLU(z), over each group's d_inner / G channels (all of them for G = 1),
    with epsilon `gate_norm_eps` (Mamba-2's `ngroups` and the gate norm's epsilon, as set by
    checkpoints of Hugging Face's `Mamba2ForCausalLM`: `seqlab.interop.mamba`).
    Init (the paper's): A = −exp(A_log) with A ~ U[1, 16] per head; b_Δ = softplus⁻¹(Δ₀) with
    Δ₀ log-uniform in [dt_min, dt_max] (floored at 1e-4); D = 1; conv as ShortConv.

    `negative_eigenvalues` (Grazzi et al., "Unlocking State-Tracking in Linear RNNs Through
    Negative Eigenvalues", 2025) uses the paper's Mamba change a_t = 2 exp(Δ_t A) − 1 ∈ (−1, 1)
    (as seqlab's `mamba`). A negative decay has no logarithm, so the log-space kernel cannot
    take it directly; because the decay is one scalar per head, its sign factors out of every
    product of decays (`signed_gla`), and the same chunked kernel runs on σ-signed q and k
    with log |a_t|. This keeps the chunked matmul form (no per-channel diagonal scan over
    [B, T, H, d_state, P]) and is exact up to rounding.
    """

    linear_in_values = True
    sequence_parallel = True

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        expand: int = 2,
        d_state: int = 64,
        conv_size: int = 4,
        negative_eigenvalues: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        A_min: float = 1.0,
        A_max: float = 16.0,
        chunk_size: int = 64,
        groups: int = 1,
        gate_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model, heads, chunk_size)
        check_positive(
            self.name, expand=expand, d_state=d_state, conv_size=conv_size, groups=groups
        )
        if heads % groups:
            raise ConfigError(
                f"{self.name}: heads ({heads}) must be a multiple of groups ({groups})"
            )
        if not (0 < gate_norm_eps < 1):
            raise ConfigError(f"{self.name} gate_norm_eps must lie in (0, 1), got {gate_norm_eps}")
        check_bool(self.name, negative_eigenvalues=negative_eigenvalues)
        check_range(self.name, "dt_min", dt_min, "dt_max", dt_max)
        check_range(self.name, "A_min", A_min, "A_max", A_max)
        self.d_inner, self.d_state = expand * d_model, d_state
        self.state_k, self.state_v = d_state, head_dim(self.name, "inner", self.d_inner, heads)
        self.negative_eigenvalues, self.groups = negative_eigenvalues, groups
        conv_width = self.d_inner + 2 * groups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_width + heads, bias=False)
        self.conv = ShortConv(conv_width, conv_size, activation="silu")
        self.A_log = nn.Parameter(uniform_A_log(heads, A_min, A_max))
        self.dt_bias = nn.Parameter(dt_bias_init(heads, dt_min, dt_max))
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = nn.RMSNorm(self.d_inner, eps=gate_norm_eps)
        self.out = nn.Linear(self.d_inner, d_model, bias=False)

    def _project(self, u: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """W_in u -> ((xBC `[B, T, d_inner + 2 G d_state]`, δ `[B, T, H]`), z `[B, T, d_inner]`)."""
        conv_width = self.d_inner + 2 * self.groups * self.d_state
        z, xbc, dt = self.in_proj(u).split([self.d_inner, conv_width, self.heads], dim=-1)
        return (xbc, dt), z

    def step_and_log_decay(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        """Δ = softplus(δ + b_Δ) and g = Δ·A, both `[B, T, H]`, from the raw δ; the decay is
        exp g, or 2 exp g − 1 with `negative_eigenvalues`."""
        return selective_step(dt, self.dt_bias, self.A_log)

    def _features(
        self, inputs: tuple[Tensor, ...], state: LinearState | None
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """q = C and k = B `[B, T, H, d_state]` (shared by each group's heads), x
        `[B, T, H, P]`, Δ and g `[B, T, H]`. The values are x: Δ and the D skip belong to the
        mixing."""
        xbc_in, dt = inputs
        xbc, conv_state = self._convolve(xbc_in, state)
        width = self.groups * self.d_state
        x, B, C = xbc.split([self.d_inner, width, width], dim=-1)
        delta, g = self.step_and_log_decay(dt)
        q, k = self._per_head(C), self._per_head(B)
        return (q, k, heads_view(x, self.heads), delta, g), conv_state

    def _per_head(self, bc: Tensor) -> Tensor:
        """B or C `[B, T, G · d_state]` -> `[B, T, H, d_state]`, head h reading group
        h // (H / G)."""
        grouped = bc.unflatten(-1, (self.groups, 1, self.d_state))
        return grouped.expand(-1, -1, -1, self.heads // self.groups, -1).flatten(2, 3)

    def _kernel(
        self, q: Tensor, k: Tensor, x: Tensor, delta: Tensor, g: Tensor, **options: object
    ) -> tuple[Tensor, ...]:
        """y = SSD(q, k, Δ·x; g) + D x `[B, T, H, P]`, then the kernel's states."""
        y, *states = ssd(q, k, x, delta, g, signed=self.negative_eigenvalues, **options)
        return y + self.D[:, None] * x, *states

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        gated = y.flatten(2) * F.silu(z)
        if self.groups == 1:
            return self.out(self.norm(gated))
        width = self.d_inner // self.groups
        grouped = F.rms_norm(gated.unflatten(-1, (self.groups, width)), (width,), eps=self.norm.eps)
        return self.out(grouped.flatten(-2) * self.norm.weight)

    def mixing_flops(self, seq_len: int) -> float:
        """The chunked kernel (K = d_state, V = headdim) and conv, Δ, the D skip, the gate and
        the norm (~12 per inner channel)."""
        return super().mixing_flops(seq_len) + 12.0 * self.d_inner
