"""S4: a normal-plus-low-rank (NPLR) HiPPO state-space model per channel, applied as a long
convolution whose kernel comes from a Cauchy product and a Woodbury correction.

Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces" (2022), and
Gu, Johnson, Timalsina, Rudra, Ré, "How to Train Your HiPPO" (2023) for the LegS, LegT and FouT
matrices. The block around the SSM, the chunked causal form and the bidirectional FFT form are
`ConvSSM`'s, shared with `s4d` (the diagonal variant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.mixers.base import no_weight_decay
from seqlab.mixers.common import log_uniform_log_dt
from seqlab.mixers.conv_ssm import ChunkMaps, GatedConvSSM, StateSpace, advance
from seqlab.registry import MIXERS

S4_INITS = ("legs", "legt", "fout")
S4_DISCRETIZATIONS = ("bilinear", "zoh")
# The smallest |Re Λ| at init: LegT's and FouT's normal parts are skew (Re Λ = 0), and the
# parameterisation Re Λ = −exp(·) keeps it strictly negative.
MIN_DECAY = 1e-4


def hippo(init: str, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The HiPPO matrices of a measure and their low-rank correction, float64:
    A `[N, N]`, B `[N]` and P `[r, N]` with A + Pᵀ P normal (a multiple of I plus a skew part).

    LegS (r = 1): A_nk = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k);
    B_n = √(2n+1), P_n = √(n + 1/2), so A + PᵀP = −I/2 + skew.
    LegT (r = 2): A_nk = −½ √(2n+1)√(2k+1) · (1 if n ≥ k else (−1)^{n−k}), B_n = ½ √(2n+1);
    P_0 = √((2n+1)/2) on odd n, P_1 the same on even n: A + PᵀP is skew.
    FouT (r = 1): a sine/cosine pair per frequency f = 1 … N/2 − 1 rotating at π f (states
    2f, 2f+1; state 0 the constant, state 1 unused), B_n = √2 on even n > 0, B_0 = 1,
    A = rotations − B Bᵀ, P = B: A + PᵀP is skew.
    """
    q = torch.arange(n, dtype=torch.float64)
    r = (2 * q + 1).sqrt()
    row, col = q[:, None], q[None, :]
    if init == "legs":
        a = -torch.where(row > col, r[:, None] * r[None, :], torch.diag(q + 1))
        return a, r, (q + 0.5).sqrt()[None]
    if init == "legt":
        signs = torch.where(row >= col, 1.0, (-1.0) ** (row - col))
        a = -0.5 * r[:, None] * r[None, :] * signs
        odd = (q % 2 == 1).to(torch.float64)
        p = torch.stack([r * odd, r * (1 - odd)]) * 0.5**0.5
        return a, 0.5 * r, p
    b = (q % 2 == 0) * torch.full_like(q, 2**0.5)
    b[0] = 1.0
    freqs = torch.where(q % 2 == 0, q / 2, 0.0)[:-1]  # couples states 2f and 2f + 1
    rotation = math.pi * (torch.diag(freqs, -1) - torch.diag(freqs, 1))
    return rotation - b[:, None] * b[None, :], b, b[None]


def nplr(init: str, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The NPLR form of a HiPPO matrix, keeping one mode of each conjugate pair:
    A = V (Λ − P̃ P̃*) V*, B = V B̃ with V `[N, N]` unitary whose columns N/2 … N−1 are the
    conjugates of the first N/2, so Λ, P̃, B̃ are given on N/2 modes and the other half are
    their conjugates.

    Returns Λ `[N/2]`, P̃ `[r, N/2]`, B̃ `[N/2]` and the kept columns V `[N, N/2]`, complex128.
    The normal part A + PᵀP = c I + S (S skew) is diagonalised as S = V diag(iμ) V* through
    the Hermitian −iS; the pair μ = 0 (FouT's constant and unused states) gets the vector
    (q₁ + i q₂)/√2 from a real orthonormal basis q₁, q₂ of the null space (its conjugate
    completes V).
    """
    a, b, p = hippo(init, n)
    normal = a + p.T @ p
    real = normal.diagonal().mean()
    skew = normal - real * torch.eye(n, dtype=torch.float64)
    mu, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    half = n // 2
    mu, v = mu[:half], vectors[:, :half].clone()  # μ ≤ 0: one of each pair ±μ
    if mu[-1].abs() < 1e-8:
        null = vectors[:, half - 1 : half + 1]
        basis = torch.linalg.svd(torch.cat([null.real, null.imag], dim=-1))[0]
        v[:, -1] = torch.complex(basis[:, 0], basis[:, 1]) * 0.5**0.5
    lam = torch.complex(real.expand(half), mu)
    return lam, (v.mH @ p.T.to(v.dtype)).T, v.mH @ b.to(v.dtype), v


def interleave(z: Tensor) -> Tensor:
    """Complex `[..., n]` -> real `[..., 2n]` (Re z_0, Im z_0, Re z_1, …)."""
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2)


def krylov(a: Tensor, b: Tensor, length: int) -> Tensor:
    """[b, A b, …, A^{L−1} b] `[..., N, L]` for A `[..., N, N]`, b `[..., N]`, by doubling:
    X_{2m} = [X_m, A^m X_m], A^{2m} = (A^m)², in O(N² L + N³ log L)."""
    x, power = b[..., None], a
    while x.shape[-1] < length:
        x = torch.cat([x, power @ x], dim=-1)
        if x.shape[-1] < length:
            power = power @ power
    return x[..., :length]


class NPLRSSM(StateSpace):
    """`channels` independent SSMs with an NPLR state matrix, each on d_state/2 complex modes
    (the other half of each conjugate pair implicit).

    Continuous: x' = A x + B u, y = C x on the N-dim complex state [x; x̄] with
    A = diag(Λ, Λ̄) − [P; P̄][P; P̄]*, Re Λ_n = −exp(log_A_real_n) < 0, so A + A* ≺ 0 and A is
    stable for any parameter values. On the kept half the dynamics read
    x' = Λ x − 2 P Re(P* x) + B u, y = 2 Re(C x), real-linear: as a real system on
    s = (Re x_0, Im x_0, …) `[N]` (the stored state) A_r = blockdiag([[a, −b], [b, a]]) −
    2 Σ_r p_r p_rᵀ, B_r = (Re B, Im B …), C_r = 2 (Re C, −Im C …) (`real_system`).

    Discretisation with step Δ = exp(log_dt): bilinear Ā = (I − Δ/2 A)⁻¹(I + Δ/2 A),
    B̄ = (I − Δ/2 A)⁻¹ Δ B; ZOH Ā = exp(ΔA), B̄ = A⁻¹(Ā − I) B (one matrix exponential of
    [[ΔA, ΔB], [0, 0]]). C̄ = C. Trained: log_dt `[channels]`, log_A_real, A_imag
    `[channels, N/2]`, P `[channels, r, N/2, 2]`, B, C `[channels, N/2, 2]` (complex stored
    as real pairs). Init: Λ, P, B from `nplr` in every channel, C ~ CN(0, 1),
    log Δ ~ U[log dt_min, log dt_max].

    Decodes and short inputs (T ≤ `recurrent_steps`) run step by step (`recurrence`): the
    bilinear step through the NPLR structure at O(N r) per channel and step, with no N × N
    matrix; ZOH one dense matrix exponential per call, then O(N²) per step. The chunked form
    would discretise densely twice and build Krylov maps and matrix powers.
    """

    # Measured on CPU (one thread, 128 channels, d_state 64): the steps beat the chunked form,
    # forward and backward, up to T = 128 at batch 1 and T = 64 at batch 8.
    recurrent_steps = 32

    def __init__(
        self,
        channels: int,
        d_state: int,
        *,
        init: str,
        discretization: str,
        dt_min: float,
        dt_max: float,
    ) -> None:
        super().__init__()
        self.d_state, self.init, self.discretization = d_state, init, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        modes = d_state // 2
        rank = hippo(init, 2)[2].shape[0]
        self.log_dt = torch.nn.Parameter(torch.empty(channels))
        self.log_A_real = torch.nn.Parameter(torch.empty(channels, modes))
        self.A_imag = torch.nn.Parameter(torch.empty(channels, modes))
        self.P = torch.nn.Parameter(torch.empty(channels, rank, modes, 2))
        self.B = torch.nn.Parameter(torch.empty(channels, modes, 2))
        self.C = torch.nn.Parameter(torch.empty(channels, modes, 2))
        no_weight_decay(self.log_dt, self.log_A_real, self.A_imag, self.P, self.B)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        lam, p, b, _ = nplr(self.init, self.d_state)
        self.log_A_real.copy_((-lam.real).clamp(min=MIN_DECAY).log().expand_as(self.log_A_real))
        self.A_imag.copy_(lam.imag.expand_as(self.A_imag))
        self.P.copy_(torch.view_as_real(p).expand_as(self.P))
        self.B.copy_(torch.view_as_real(b).expand_as(self.B))
        self.C.normal_(std=math.sqrt(0.5))
        self.log_dt.copy_(log_uniform_log_dt(self.log_dt.shape, self.dt_min, self.dt_max))

    def parameters_complex(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Λ `[channels, N/2]`, P `[channels, r, N/2]`, B, C `[channels, N/2]`, complex."""
        lam = torch.complex(-self.log_A_real.exp(), self.A_imag)
        p, b, c = (torch.view_as_complex(t) for t in (self.P, self.B, self.C))
        return lam, p, b, c

    def real_system(self) -> tuple[Tensor, Tensor, Tensor]:
        """The continuous system on the real state s: A_r `[channels, N, N]`, B_r, C_r
        `[channels, N]` (see the class docstring)."""
        lam, p, b, c = self.parameters_complex()
        blocks = torch.stack(
            [torch.stack([lam.real, -lam.imag], -1), torch.stack([lam.imag, lam.real], -1)], -2
        )  # [channels, N/2, 2, 2]
        eye = torch.eye(lam.shape[-1], dtype=blocks.dtype, device=blocks.device)
        diagonal = torch.einsum("dnij,nm->dnimj", blocks, eye).flatten(3).flatten(1, 2)
        p_r = interleave(p)
        a_r = diagonal - 2 * torch.einsum("drm,drn->dmn", p_r, p_r)
        return a_r, interleave(b), 2 * interleave(c.conj())

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ā `[channels, N, N]`, B̄, C̄ `[channels, N]` on the real state."""
        a, b, c = self.real_system()
        dt = self.log_dt.exp()[:, None]
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        if self.discretization == "bilinear":
            left = eye - dt[..., None] / 2 * a
            a_bar = torch.linalg.solve(left, eye + dt[..., None] / 2 * a)
            return a_bar, torch.linalg.solve(left, dt * b), c
        augmented = torch.cat([dt[..., None] * a, (dt * b)[..., None]], dim=-1)
        exp = torch.linalg.matrix_exp(F.pad(augmented, (0, 0, 0, 1)))
        return exp[:, :-1, :-1], exp[:, :-1, -1], c

    def kernel(self, length: int) -> Tensor:
        """K `[length, channels]`, K_l = C̄ Ā^l B̄: by `cauchy_kernel` (bilinear) or, for ZOH,
        whose exp(ΔA) has no NPLR resolvent, from the Krylov vectors Ā^l B̄ (`krylov`)."""
        if self.discretization == "bilinear":
            return self.cauchy_kernel(length)
        a_bar, b_bar, c = self.discretize()
        return torch.einsum("dn,dnl->ld", c, krylov(a_bar, b_bar, length))

    def cauchy_kernel(self, length: int) -> Tensor:
        """The bilinear kernel K `[L, channels]` by S4's Algorithm 1.

        Its truncated generating function at the roots of unity z_k = exp(−2πik/L),
        K̂(z) = Σ_{l<L} C̄ Ā^l B̄ z^l = C̃ (I − Ā z)⁻¹ B̄ with C̃ = C (I − Ā^L), is for the
        bilinear Ā a resolvent of A: (I − Ā z)⁻¹ B̄ = (g I − s A)⁻¹ B with g = (1 − z)/Δ,
        s = (1 + z)/2. With A = Λ − P P* (over both halves of each conjugate pair) and
        Woodbury, K̂ = r_CB − s r_CP (I + s r_PP)⁻¹ r_PB, where r_XY(z) = Σ_n X_n Y_n /
        (g − s λ_n) (X ∈ {C̃, P̄}, Y ∈ {B, P}) are Cauchy sums over all N modes (a kept mode
        and its conjugate term). K = inverse real FFT of K̂ over the L//2 + 1 nodes.
        Cost O((N + L) L_f)·(1 + r)² per channel plus one Ā^L (log L dense products).
        """
        lam, p, b, _ = self.parameters_complex()
        a_bar, _, c = self.discretize()
        c_tilde = c - torch.einsum("dm,dmn->dn", c, torch.linalg.matrix_power(a_bar, length))
        # The real row C̃_r reads 2 Re(c̃ x) with c̃ = (C̃_r[2n] − i C̃_r[2n+1]) / 2.
        c_tilde = torch.view_as_complex(c_tilde.unflatten(-1, (-1, 2)).contiguous()).conj() / 2
        nodes = torch.arange(length // 2 + 1, device=lam.device, dtype=self.log_dt.dtype)
        z = torch.polar(torch.ones_like(nodes), -2 * math.pi * nodes / length)
        s = (1 + z) / 2
        g = (1 - z) / self.log_dt.exp()[:, None]  # [channels, F]
        rows = torch.cat([c_tilde[:, None], p.conj()], dim=1)  # [channels, 1 + r, N/2]
        cols = torch.cat([b[:, None], p], dim=1)
        v = rows[:, :, None] * cols[:, None]  # [channels, 1 + r, 1 + r, N/2]
        denominator = g[..., None] - s[:, None] * lam[:, None]  # [channels, F, N/2]
        conj_denominator = g[..., None] - s[:, None] * lam.conj()[:, None]
        r = torch.einsum("dijn,dfn->dfij", v, 1 / denominator) + torch.einsum(
            "dijn,dfn->dfij", v.conj(), 1 / conj_denominator
        )
        rank = p.shape[1]
        capacitance = (
            torch.eye(rank, dtype=r.dtype, device=r.device) + s[:, None, None] * r[..., 1:, 1:]
        )
        solved = torch.linalg.solve(capacitance, r[..., 1:, :1])[..., 0]  # [channels, F, r]
        spectrum = r[..., 0, 0] - s * (r[..., 0, 1:] * solved).sum(-1)
        return torch.fft.irfft(spectrum, n=length).T

    def chunk_maps(self, size: int, tail: int) -> ChunkMaps:
        """Dense maps on the real state: write Ā^{C−1−s} B̄ and read C̄ Ā^{t+1} (Krylov
        vectors), decay Ā^C and last Ā^{tail}."""
        a_bar, b_bar, c = self.discretize()
        transposed = a_bar.mT
        return ChunkMaps(
            write=krylov(a_bar, b_bar, size).flip(-1),
            read=krylov(transposed, (transposed @ c[..., None])[..., 0], size),
            decay=torch.linalg.matrix_power(a_bar, size),
            last=torch.linalg.matrix_power(a_bar, tail),
        )

    def transition(self, length: int) -> Tensor:
        """Ā^length `[channels, N, N]` on the real state."""
        return torch.linalg.matrix_power(self.discretize()[0], length)

    def recurrence(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """y `[B, T, channels]` and the final real state s `[B, channels, N]` from s_0 = h0
        (zero when None), u `[B, T, channels]`, one step at a time.

        Bilinear: `bilinear_steps`, O(N r) per channel and step. ZOH: Ā = exp(ΔA) has no NPLR
        structure (nor any cheap exact form), so each call discretises once, densely (one
        matrix exponential of [[ΔA, ΔB], [0, 0]], O(N³) per channel, shared by its T steps),
        then s_t = Ā s_{t−1} + B̄ u_t, y_t = C̄ s_t at O(N²) per channel and step.
        """
        if self.discretization == "bilinear":
            return self.bilinear_steps(u, h0)
        a_bar, b_bar, c = self.discretize()
        u = u.to(a_bar.dtype)
        h = b_bar.new_zeros(u.shape[0], *b_bar.shape) if h0 is None else h0.to(a_bar.dtype)
        outputs = []
        for t in range(u.shape[1]):
            h = advance(a_bar, h) + b_bar * u[:, t, :, None]
            outputs.append((c * h).sum(-1))
        return torch.stack(outputs, dim=1), h

    def bilinear_steps(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """The bilinear recurrence on the complex modes x `[B, channels, N/2]` through the NPLR
        structure (S4's recurrent view), O(N r) per channel and step; shapes as `recurrence`.

        With R = (I − Δ/2 A)⁻¹, Ā = R (I + Δ/2 A) = 2R − I and B̄ = R Δ B, so
        x_t = R (2 x_{t−1} + Δ B u_t) − x_{t−1}, y_t = 2 Re(C x_t). On [x; x̄],
        I − Δ/2 A = D + Δ/2 Q Q* with D = diag(1 − Δ/2 Λ, conjugates) and Q = [P, P̄]ᵀ `[N, r]`;
        by Woodbury R v = w − Δ/2 D⁻¹ Q M⁻¹ Q* w with w = D⁻¹ v and the real r × r
        M = I + Δ/2 Q* D⁻¹ Q = I + Δ Re(Σ_n P̄_n P_nᵀ / d_n). For a conjugate-symmetric
        [w; w̄], Q* [w; w̄] = 2 Re(Σ_n P̄_n w_n) `[r]`: every sum runs over the kept modes.
        """
        lam, p, b, c = self.parameters_complex()
        dt = self.log_dt.exp()[:, None]  # [channels, 1]
        inverse_d = 1 / (1 - dt / 2 * lam)  # D⁻¹, [channels, N/2]
        p_d = p * inverse_d[:, None]  # D⁻¹ Q, [channels, r, N/2]
        rank = p.shape[1]
        capacitance = torch.eye(rank, dtype=dt.dtype, device=dt.device) + dt[..., None] * (
            torch.einsum("drn,dsn->drs", p.conj(), p_d).real
        )
        # R v = w − Σ_s q_s correction_s with q = Q* w and correction = Δ/2 (M⁻¹)ᵀ D⁻¹ Q.
        correction = torch.einsum("drs,drn->dsn", torch.linalg.inv(capacitance).to(p.dtype), p_d)
        correction = dt[..., None] / 2 * correction
        read_q = 2 * p.conj()
        write = dt * b * inverse_d  # D⁻¹ Δ B
        u = u.to(dt.dtype)
        if h0 is None:
            x = lam.new_zeros(u.shape[0], *lam.shape)
        else:
            x = torch.view_as_complex(h0.to(dt.dtype).unflatten(-1, (-1, 2)).contiguous())
        outputs = []
        for t in range(u.shape[1]):
            w = 2 * inverse_d * x + write * u[:, t, :, None]
            q = torch.einsum("drn,bdn->bdr", read_q, w).real
            x = w - (q[..., None] * correction).sum(-2) - x
            outputs.append(2 * torch.einsum("dn,bdn->bd", c, x).real)
        return torch.stack(outputs, dim=1), interleave(x)

    def load_state(self, pairs: Tensor) -> Tensor:
        return pairs.flatten(-2)

    def store_state(self, h: Tensor) -> Tensor:
        return h.unflatten(-1, (-1, 2))


def nplr_kernel_reference(ssm: NPLRSSM, length: int) -> Tensor:
    """Reference kernel K `[length, channels]`: materialise the full N-mode complex system,
    A = diag(Λ, Λ̄) − [P; P̄][P; P̄]*, B = [B; B̄], C = [C; C̄], discretise it (dense solve or
    matrix exponential) and take powers, K_l = C̄ Ā^l B̄, one step at a time."""
    a, b_bar, c = nplr_dense_reference(ssm)
    x, taps = b_bar, []
    for _ in range(length):
        taps.append((c * x).sum(-1).real)
        x = torch.einsum("dmn,dn->dm", a, x)
    return torch.stack(taps)


def nplr_recurrence_reference(ssm: NPLRSSM, u: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    """Reference recurrence on the full complex state [x; x̄] with the dense Ā, B̄ of
    `nplr_dense_reference`: x_t = Ā x_{t−1} + B̄ u_t, y_t = Re(C x_t) = 2 Re of the kept
    half's sum, from the kept modes x0 `[B, channels, N/2]`; u `[B, T, channels]`.
    Returns y `[B, T, channels]` and the final kept modes."""
    a_bar, b_bar, c = nplr_dense_reference(ssm)
    x = torch.cat([x0, x0.conj()], dim=-1)
    outputs = []
    for t in range(u.shape[1]):
        x = torch.einsum("dmn,bdn->bdm", a_bar, x) + b_bar * u[:, t, :, None]
        outputs.append((c * x).sum(-1).real)
    return torch.stack(outputs, dim=1), x[..., : x.shape[-1] // 2]


def nplr_dense_reference(ssm: NPLRSSM) -> tuple[Tensor, Tensor, Tensor]:
    """Ā `[channels, N, N]`, B̄, C `[channels, N]` of the full complex system [x; x̄]."""
    lam, p, b, c = ssm.parameters_complex()
    both = [torch.cat([t, t.conj()], dim=-1) for t in (lam, p, b, c)]
    lam, p, b, c = both
    a = torch.diag_embed(lam) - torch.einsum("drm,drn->dmn", p, p.conj())
    dt = ssm.log_dt.exp()[:, None, None].to(a.dtype)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    if ssm.discretization == "bilinear":
        a_bar = torch.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)
        b_bar = torch.linalg.solve(eye - dt / 2 * a, dt[..., 0] * b)
    else:  # exp([[ΔA, ΔB], [0, 0]]) = [[Ā, B̄], [0, 1]], well conditioned for A near singular
        augmented = torch.cat([dt * a, (dt[..., 0] * b)[..., None]], dim=-1)
        exp = torch.linalg.matrix_exp(F.pad(augmented, (0, 0, 0, 1)))
        a_bar, b_bar = exp[:, :-1, :-1], exp[:, :-1, -1]
    return a_bar, b_bar, c


@MIXERS.register("s4")
class S4(GatedConvSSM):
    """S4 (Gu et al., 2022): the `GatedConvSSM` block around an NPLR HiPPO state-space model per
    channel (`NPLRSSM`), applied as a long convolution.

    The block: u, z = W_in x; y = W_out(GELU(SSM(u) + D ⊙ u) ⊙ σ(z)), where
    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s with K_l = C̄ Ā^l B̄ (Cauchy kernel for the bilinear
    discretisation); equivalently the recurrence s_t = Ā s_{t−1} + B̄ u_t, SSM(u)_t = C̄ s_t on
    the real state s `[B, d_inner, d_state]` (d_state/2 complex modes as real pairs).
    Shapes: x `[B, T, d_model]`, u, z `[B, T, d_inner]` (d_inner = expand · d_model).
    Options: `init` legs | legt | fout (HiPPO measure), `discretization` bilinear | zoh.
    """

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 2,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: int = 64,
    ) -> None:
        if init not in S4_INITS:
            raise ConfigError(f"s4 init must be one of {S4_INITS}, got {init!r}")
        if discretization not in S4_DISCRETIZATIONS:
            raise ConfigError(
                f"s4 discretization must be one of {S4_DISCRETIZATIONS}, got {discretization!r}"
            )
        dt_range = {"dt_min": dt_min, "dt_max": dt_max}
        super().__init__(d_model, expand=expand, d_state=d_state, chunk_size=chunk_size, **dt_range)
        options = {"init": init, "discretization": discretization, **dt_range}
        self.ssm = NPLRSSM(self.d_inner, d_state, **options)
        self.ssm_reverse = NPLRSSM(self.d_inner, d_state, **options)

    def mixing_flops(self, seq_len: int) -> float:
        """Per token and channel, in the chunked causal form: the in-chunk Toeplitz product
        (2C, C = min(chunk_size, T)), writing and reading the dense real state (4 · d_state),
        carrying it across chunks (2 · d_state² / C), then skip, GELU, gate (~10)."""
        size = min(self.chunk_size, seq_len)
        return self.d_inner * (2.0 * size + 4.0 * self.d_state + 2.0 * self.d_state**2 / size + 10)
