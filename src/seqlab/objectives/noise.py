"""Noise schedules, time draws and the absorbing / uniform corruption of discrete diffusion.

Time runs from t = 0 (clean, α = 1) to t = 1 (pure noise, α = 0). Every schedule reaches
α(1) = 0 exactly, so the continuous-time ELBO needs no prior term and is a true bound.
Schedules give the mask rate 1 − α(t) and the ELBO weight −α′(t) / (1 − α(t)) in closed
forms that never subtract nearly equal numbers, so t close to 0 stays accurate.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from seqlab.errors import ConfigError


class Schedule(ABC):
    """α(t): the probability that a token is still clean at time t."""

    name: str

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - self.noise_rate(t)

    @abstractmethod
    def noise_rate(self, t: Tensor) -> Tensor:
        """1 − α(t)."""

    @abstractmethod
    def weight(self, t: Tensor) -> Tensor:
        """−α′(t) / (1 − α(t)), the weight of the absorbing ELBO's cross-entropy at time t."""

    @abstractmethod
    def decay(self, t: Tensor) -> Tensor:
        """−α′(t) / α(t), the rate at which clean tokens are noised (uniform-noise ELBO)."""


class LogLinear(Schedule):
    """α(t) = 1 − t (MDLM's log-linear σ(t) = −log(1 − t)); weight 1 / t."""

    name = "loglinear"

    def noise_rate(self, t: Tensor) -> Tensor:
        return t

    def weight(self, t: Tensor) -> Tensor:
        return 1 / t

    def decay(self, t: Tensor) -> Tensor:
        return 1 / (1 - t)


class Cosine(Schedule):
    """α(t) = cos(πt/2); 1 − α = 2 sin²(πt/4), weight (π/2) cot(πt/4), decay (π/2) tan(πt/2)."""

    name = "cosine"

    def noise_rate(self, t: Tensor) -> Tensor:
        return 2 * torch.sin(math.pi * t / 4) ** 2

    def weight(self, t: Tensor) -> Tensor:
        return (math.pi / 2) / torch.tan(math.pi * t / 4)

    def decay(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.tan(math.pi * t / 2)


SCHEDULES = {s.name: s for s in (LogLinear, Cosine)}


def build_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]()


def stratified_times(
    n: int, *, low: float = 0.0, high: float = 1.0, device: torch.device | None = None
) -> Tensor:
    """`n` times in [low, high], float64, low-discrepancy (MDLM's antithetic draw).

    u_i = (u + i/n) mod 1 with one u ~ U[0, 1) from torch's global generator: each u_i is
    uniform on its own, so estimates stay unbiased, and together they cover [0, 1) evenly.
    u_i is kept 1e-12 away from 0 and 1, so t never reaches 0 (infinite absorbing weight)
    nor 1 (infinite uniform decay).
    """
    u = (torch.rand((), dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1
    return (low + (high - low) * u.clamp(1e-12, 1 - 1e-12)).to(device)


def absorb(tokens: Tensor, rate: Tensor, scored: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """Replace each scored token by `mask_id` with probability `rate` (broadcast to `[B, L]`).

    Returns `(x_t, masked)`; positions outside `scored` stay clean context.
    """
    masked = (torch.rand(tokens.shape, dtype=torch.float64, device=tokens.device) < rate) & scored
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def absorb_count(
    tokens: Tensor, u: Tensor, scored: Tensor, groups: Tensor, mask_id: int
) -> tuple[Tensor, Tensor]:
    """Mask k of the n scored tokens of each group, k = ⌈u · n⌉ uniform on 1..n, a uniformly
    random subset; returns `(x_t, weight)` with weight n / k at every position.

    E_k E_{|m|=k} [(n/k) Σ_{i∈m} −log x̂_0^i] = Σ_m B(|m|, n − |m| + 1) Σ_{i∈m} −log x̂_0^i is
    the continuous-time absorbing ELBO integrated over t in closed form (the number of
    masked tokens replaces t), so this estimates the same bound without the 1/t weight. A
    group of one token (block size 1) is always masked with weight 1: the exact chain rule.
    `u [B, L]` is constant within a group; `groups [L]` are contiguous group indices. A
    group at u = 0 (a clean group of a hyperschedule) stays clean.
    """
    b, length = tokens.shape
    keys = torch.rand(b, length, dtype=torch.float64, device=tokens.device)
    keys = keys + 4 * groups + 2 * (~scored)  # scored first within a group, groups in order
    rank = keys.argsort(dim=1).argsort(dim=1)
    index = torch.arange(length, device=tokens.device)
    start = torch.full_like(groups, length).scatter_reduce(0, groups, index, "amin")
    rank = rank - start[groups]
    counts = torch.zeros(b, int(groups.max()) + 1, device=tokens.device, dtype=torch.float64)
    n = counts.index_add(1, groups, scored.double())[:, groups]
    k = torch.where(u > 0, torch.ceil(u * n).clamp(min=1), 0.0)
    masked = scored & (rank < k)
    x_t = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    return x_t, n / k.clamp(min=1)


def uniform_noise(
    tokens: Tensor, alpha: Tensor, scored: Tensor, vocab_size: int
) -> tuple[Tensor, Tensor]:
    """Keep each scored token with probability α, else draw it uniformly from the vocabulary
    (which may redraw the same token). Returns `(x_t, resampled)`."""
    shape, device = tokens.shape, tokens.device
    resampled = (torch.rand(shape, dtype=torch.float64, device=device) >= alpha) & scored
    noise = torch.randint(0, vocab_size, shape, device=device)
    return torch.where(resampled, noise, tokens), resampled


def absorbing_posterior(alpha_t: Tensor, alpha_s: Tensor) -> tuple[Tensor, Tensor]:
    """q(x_s | x_t = mask, x_0) for s < t: `(p_unmask, p_stay_masked)` =
    ((α_s − α_t) / (1 − α_t), (1 − α_s) / (1 − α_t)); an unmasked x_s equals x_0."""
    return (alpha_s - alpha_t) / (1 - alpha_t), (1 - alpha_s) / (1 - alpha_t)


def uniform_posterior(x_t: Tensor, x0_probs: Tensor, alpha_t: Tensor, alpha_s: Tensor) -> Tensor:
    """q(x_s | x_t, x_0) of uniform noise for s < t, with x_0 given as probabilities `[..., N]`.

    x_s = y has weight q(x_t | x_s = y) · q(x_s = y | x_0) =
    (α_{t|s} [y = x_t] + (1 − α_{t|s}) / N) · (α_s x_0[y] + (1 − α_s) / N), α_{t|s} = α_t / α_s,
    normalised over y. A one-hot x_0 gives the true posterior; the model's x̂_0 gives the
    UDLM reverse step p_θ(x_s | x_t) ∝ q(x_t | x_s) · Σ_x0 q(x_s | x_0) x̂_0(x_0).
    `alpha_t`, `alpha_s` broadcast against `x_t [...]`. Returns `[..., N]`.
    """
    n = x0_probs.shape[-1]
    a_t, a_s = alpha_t[..., None], alpha_s[..., None]
    a_ts = a_t / a_s
    stay = torch.nn.functional.one_hot(x_t, n).to(x0_probs.dtype)
    weights = (a_ts * stay + (1 - a_ts) / n) * (a_s * x0_probs + (1 - a_s) / n)
    return weights / weights.sum(dim=-1, keepdim=True)


HYPERSCHEDULES = ("flat", "staircase", "sliding")


class Hyperschedule:
    """Per-position noise levels τ_i(t) driven by one global time t (Fathi et al., 2025).

        τ_i(t) = clip(v · t − d_i, 0, 1),    τ_i′(t) = v · [0 < v · t − d_i < 1]

    Position i runs its own schedule α(τ_i(t)); each ramp takes 1/v of global time, and
    later positions start earlier (d_i decreases in i), so in reverse time the sequence is
    denoised from the left. Over a sequence of L positions:

    - `flat`: v = 1, d_i = 0: every position shares t (plain masked diffusion);
    - `staircase` of width w: the n = ⌈L/w⌉ blocks b = ⌊i/w⌋ ramp one after another,
      v = n, d_i = n − 1 − b: a block is clean before the next one starts (width 1: the
      chain rule, as autoregression; width ≥ L: flat);
    - `sliding` of width w: v = (L − 1 + w)/w, d_i = (L − 1 − i)/w: a window of about w
      partially noised positions slides over the sequence (width 1: the staircase of 1).

    Each position's noise is its own process in time τ_i, so the joint ELBO is the sum over
    positions of their integrands at τ_i(t), each times τ_i′(t) (the chain rule of the time
    change): −log p(x_0) ≤ ∫_0^1 E_{x_t} [Σ_i τ_i′(t) · f_i(x_t, τ_i(t))] dt, where f_i is
    the process's ELBO integrand for position i. τ_i(1) = 1 for all i: no prior term.
    """

    def __init__(self, kind: str = "flat", width: int = 1) -> None:
        if kind not in HYPERSCHEDULES:
            raise ConfigError(
                f"hyperschedule kind must be one of {list(HYPERSCHEDULES)}, got {kind!r}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"hyperschedule width must be a positive integer, got {width!r}")
        self.kind, self.width = kind, width

    @property
    def flat(self) -> bool:
        return self.kind == "flat"

    def _rational(self, length: int, device: torch.device) -> tuple[int, Tensor, int]:
        """Integers (a, e_i `[L]`, c) with v = a / c and d_i = e_i / c."""
        index = torch.arange(length, device=device)
        if self.kind == "staircase":
            blocks = -(-length // self.width)
            return blocks, blocks - 1 - index // self.width, 1
        if self.kind == "sliding":
            return length - 1 + self.width, length - 1 - index, self.width
        return 1, torch.zeros_like(index), 1

    def speed_and_lag(self, length: int, device: torch.device) -> tuple[float, Tensor]:
        """v and d_i `[L]` (float64) over a sequence of `length` positions."""
        a, e, c = self._rational(length, device)
        return a / c, e.double() / c

    def sampling_steps(self, length: int) -> int:
        """The natural number K of reverse steps over `length` positions: the grid
        t_k = 1 − k/K on which every ramp starts and ends on a grid time and takes one step
        per position it holds, so a sampler commits about one position per step.

        - `flat`: K = L, every position ramps over all K steps;
        - `staircase` of width w: n = ⌈L/w⌉ ramps one after another, min(w, L) steps each:
          K = n · min(w, L) (width 1: K = L, one position per step, as autoregression);
        - `sliding` of width w: a ramp starts at every step and lasts w steps (position i
          moves during steps i … i + w − 1 and is clean after step i + w − 1): K = L − 1 + w,
          the L positions plus the width of the ramp.
        """
        if self.kind == "staircase":
            return -(-length // self.width) * min(self.width, length)
        if self.kind == "sliding":
            return length - 1 + self.width
        return length

    def grid_levels(self, length: int, step: int, steps: int, device: torch.device) -> Tensor:
        """τ_i(t) `[L]` (float64) at the grid time t = (K − k)/K, k = `step`, K = `steps`.

        Formed as clip((a·(K − k) − e_i·K) / (c·K), 0, 1) from the integers of v = a/c and
        d_i = e_i/c, so a level the schedule puts at 0 (clean) or 1 (pure noise) is exactly
        that, on any grid."""
        a, e, c = self._rational(length, device)
        ramp = (a * (steps - step) - e * steps).double() / (c * steps)
        return ramp.clamp(0.0, 1.0)

    def levels(self, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """τ_i(t) and τ_i′(t) `[B, L]` from global times `t [B, L]` (one per row, repeated
        along the positions); flat returns `(t, None)` (τ′ = 1 everywhere, left out)."""
        if self.flat:
            return t, None
        speed, lag = self.speed_and_lag(t.shape[-1], t.device)
        ramp = speed * t.double() - lag
        rate = torch.where((ramp > 0) & (ramp < 1), speed, 0.0)
        return ramp.clamp(0.0, 1.0), rate

    def groups(self, length: int, device: torch.device) -> Tensor | None:
        """Positions sharing one level at every t `[L]` (the staircase's blocks), or None
        when levels differ within the sequence at some t (sliding wider than 1)."""
        if self.kind == "sliding" and self.width > 1:
            return None
        if self.kind != "flat":
            return torch.arange(length, device=device) // self.width
        return torch.zeros(length, dtype=torch.long, device=device)


def build_hyperschedule(spec: dict | None) -> Hyperschedule:
    """A Hyperschedule from `{kind, width}` (None: flat)."""
    if spec is None:
        return Hyperschedule()
    if not isinstance(spec, dict) or set(spec) - {"kind", "width"}:
        raise ConfigError(f"hyperschedule must be a mapping with keys kind, width; got {spec!r}")
    return Hyperschedule(**spec)
