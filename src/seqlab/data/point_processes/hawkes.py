"""Multivariate Hawkes process with exponential kernels and one shared decay β.

    λ_k(t) = μ_k + β Σ_{t_j < t} α_{k, m_j} exp(-β (t - t_j)),     k = 0 .. K-1,

with base rates μ [K] > 0, excitations α [K, K] >= 0 (α_{k,m}: the expected number of mark-k
children of one mark-m event, since ∫ β e^{-βs} ds = 1) and one decay β > 0 shared by all
pairs (a per-pair decay would break the O(K) state below). The process is stationary iff the
spectral radius ρ(α) < 1; `Hawkes` refuses ρ(α) >= 1 unless `stationary=False`.

**Recursion.** With R_i [K], R_{i,m} = Σ_{j<i, m_j=m} exp(-β (t_i - t_j)),

    R_1 = 0,   R_i = e^{-β Δ_i} (R_{i-1} + e_{m_{i-1}}),   Δ_i = t_i - t_{i-1},
    λ_k(t_i) = μ_k + β α_{k,:} · R_i,

and with R⁺_i = R_i + e_{m_i} (the state just after t_i) and a_m = Σ_k α_{k,m}:

    Λ(t_{i-1}, t_i) = Σ_k μ_k Δ_i + a · (R⁺_{i-1} - R_i),
    Λ(t_n, T)       = Σ_k μ_k (T - t_n) + a · R⁺_n (1 - e^{-β (T - t_n)}),

an O(n·K) state update (O(n·K²) with the products α R_i). `fit_hawkes` runs the same
recursion over a batch of sequences together with D_i = ∂R_i/∂β,
D_i = e^{-β Δ_i} D_{i-1} - Δ_i R_i, for the analytic gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from seqlab.data.point_processes.base import (
    PointProcess,
    check_sequence,
    check_simulation,
    positive,
)
from seqlab.errors import ConfigError, DataError

LOG_BOUNDS = (-20.0, 15.0)


class Hawkes(PointProcess):
    """Exponential-kernel Hawkes process: `mu` [K], `alpha` [K, K] (row: the excited mark,
    column: the exciting mark), `beta` the shared decay. Simulated by Ogata thinning."""

    def __init__(
        self,
        mu: np.ndarray | Sequence[float],
        alpha: np.ndarray | Sequence[Sequence[float]],
        beta: float,
        *,
        stationary: bool = True,
    ) -> None:
        self.mu = positive("hawkes mu", mu)
        self.alpha = positive("hawkes alpha", alpha, strict=False)
        self.beta = float(positive("hawkes beta", beta))
        k = self.mu.size
        if self.mu.ndim != 1 or k == 0 or self.alpha.shape != (k, k):
            raise ConfigError(
                f"expected hawkes mu [K] and alpha [K, K], got {self.mu.shape} and "
                f"{self.alpha.shape}"
            )
        self.num_marks = k
        radius = self.branching_ratio
        if stationary and radius >= 1:
            raise ConfigError(f"expected a hawkes branching ratio ρ(alpha) < 1, got {radius:.4g}")

    @property
    def branching_ratio(self) -> float:
        """ρ(α), the spectral radius: the expected number of descendants per generation."""
        return float(np.max(np.abs(np.linalg.eigvals(self.alpha))))

    def intensity(self, query: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        times, marks = check_sequence(times, marks, self.num_marks, None)
        lag = np.asarray(query, dtype=np.float64)[:, None] - times[None, :]
        with np.errstate(over="ignore"):
            decay = np.where(lag > 0, np.exp(-self.beta * lag), 0.0)
        return self.mu + self.beta * decay @ self.alpha[:, marks].T

    def simulate(
        self, rng: np.random.Generator, horizon: float, max_events: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # Between events the intensity only decays, so its value now bounds it until the next.
        check_simulation(horizon, max_events)
        times: list[float] = []
        marks: list[int] = []
        excitation = np.zeros(self.num_marks)
        base = self.mu.sum()
        t = 0.0
        while len(times) < max_events:
            bound = base + excitation.sum()
            wait = rng.exponential(1.0 / bound)
            t += wait
            if t > horizon:
                break
            excitation *= np.exp(-self.beta * wait)
            rates = self.mu + excitation
            if rng.uniform() * bound <= rates.sum():
                k = int(rng.choice(self.num_marks, p=rates / rates.sum()))
                times.append(t)
                marks.append(k)
                excitation += self.beta * self.alpha[:, k]
        return np.asarray(times, dtype=np.float64), np.asarray(marks, dtype=np.int64)

    def _terms(
        self, times: np.ndarray, marks: np.ndarray, horizon: float | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        n = times.size
        gaps = np.diff(times, prepend=0.0)
        state, _ = excitation_states(times[None], marks[None], self.num_marks, self.beta)
        state = state[0]
        rates = self.mu[marks] + self.beta * np.einsum("ik,ik->i", self.alpha[marks], state)
        after = state.copy()
        after[np.arange(n), marks] += 1.0
        before = np.vstack([np.zeros((1, self.num_marks)), after])[:n]
        spread = self.alpha.sum(0)
        increments = self.mu.sum() * gaps + (before - state) @ spread
        tail = 0.0
        if horizon is not None:
            rest = horizon - (times[-1] if n else 0.0)
            tail = self.mu.sum() * rest
            if n:
                tail += float(after[-1] @ spread) * -np.expm1(-self.beta * rest)
        return np.log(rates), increments, tail


def excitation_states(
    times: np.ndarray, marks: np.ndarray, num_marks: int, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """R [B, L, K] and D = ∂R/∂β [B, L, K] for right-padded sequences `times`, `marks`
    [B, L] (padding repeats a sequence's last time, so it adds nothing to the real entries):
    R_{b,i,m} = Σ_{j<i, m_j=m} exp(-β (t_i - t_j))."""
    b, length = times.shape
    state = np.zeros((b, length, num_marks))
    grad = np.zeros((b, length, num_marks))
    rows = np.arange(b)
    for i in range(1, length):
        gap = times[:, i] - times[:, i - 1]
        decay = np.exp(-beta * gap)[:, None]
        carried = state[:, i - 1].copy()
        carried[rows, marks[:, i - 1]] += 1.0
        state[:, i] = decay * carried
        grad[:, i] = decay * grad[:, i - 1] - gap[:, None] * state[:, i]
    return state, grad


class _Batch:
    """Sequences right-padded to [B, L] with their mask, counts and horizons T_b; the first
    `conditioned` events of each are history only (`scored` False)."""

    def __init__(
        self,
        sequences: Sequence[tuple[np.ndarray, np.ndarray]],
        num_marks: int,
        horizons: Sequence[float] | None,
        conditioned: int = 0,
    ) -> None:
        if horizons is not None and len(horizons) != len(sequences):
            raise DataError(f"expected {len(sequences)} horizons, got {len(horizons)}")
        checked = [
            check_sequence(t, m, num_marks, None if horizons is None else horizons[i])
            for i, (t, m) in enumerate(sequences)
        ]
        length = max([t.size for t, _ in checked] + [1])
        self.times = np.zeros((len(checked), length))
        self.marks = np.zeros((len(checked), length), dtype=np.int64)
        self.mask = np.zeros((len(checked), length), dtype=bool)
        for i, (t, m) in enumerate(checked):
            self.times[i, : t.size], self.marks[i, : t.size], self.mask[i, : t.size] = t, m, True
            self.times[i, t.size :] = t[-1] if t.size else 0.0
        last = self.times[:, -1]
        self.horizons = last if horizons is None else np.asarray(horizons, dtype=np.float64)
        self.scored = self.mask.copy()  # the events whose log-intensity is scored
        self.scored[:, :conditioned] = False
        self.num_events = int(self.scored.sum())
        self.counts = np.bincount(self.marks[self.scored], minlength=num_marks)


def _negative_log_likelihood(
    theta: np.ndarray, batch: _Batch, num_marks: int
) -> tuple[float, np.ndarray]:
    """-log L / n_events summed over the batch (events and survival up to each T_b) and its
    gradient with respect to θ = (log μ [K], log α [K·K], log β)."""
    k = num_marks
    mu, alpha, beta = np.exp(theta[:k]), np.exp(theta[k:-1]).reshape(k, k), float(np.exp(theta[-1]))
    state, dstate = excitation_states(batch.times, batch.marks, k, beta)
    rows = alpha[batch.marks]
    excitation = np.einsum("blk,blk->bl", rows, state)
    rates = mu[batch.marks] + beta * excitation
    weight = np.where(batch.scored, 1.0 / rates, 0.0)
    rest = np.where(batch.mask, batch.horizons[:, None] - batch.times, 0.0)
    fade = np.where(batch.mask, -np.expm1(-beta * rest), 0.0)
    spread = alpha.sum(0)
    log_l = (
        np.sum(np.log(rates[batch.scored]))
        - mu.sum() * batch.horizons.sum()
        - np.sum(spread[batch.marks] * fade)
    )
    onehot = np.eye(k)[batch.marks] * weight[..., None]
    g_mu = onehot.sum((0, 1)) - batch.horizons.sum()
    fade_by_source = np.bincount(batch.marks.ravel(), weights=fade.ravel(), minlength=k)
    g_alpha = beta * np.einsum("blk,blm->km", onehot, state) - fade_by_source[None, :]
    g_beta = np.sum(weight * (excitation + beta * np.einsum("blk,blk->bl", rows, dstate)))
    g_beta -= np.sum(spread[batch.marks] * np.where(batch.mask, rest * np.exp(-beta * rest), 0.0))
    grad = np.concatenate([g_mu * mu, (g_alpha * alpha).ravel(), [g_beta * beta]])
    scale = max(batch.num_events, 1)
    return -log_l / scale, -grad / scale


def fit_hawkes(
    sequences: Sequence[tuple[np.ndarray, np.ndarray]],
    num_marks: int,
    *,
    horizons: Sequence[float] | None = None,
    num_starts: int = 3,
    seed: int = 0,
    max_iter: int = 500,
    conditioned: int = 0,
) -> Hawkes:
    """Maximum-likelihood `Hawkes` for i.i.d. `sequences` of (times, marks).

    Maximizes Σ_b log L_b with log L_b = Σ_i ℓ_i - Λ(t_n, T_b), T_b = `horizons[b]` (the last
    event time when `horizons` is None, i.e. no survival term) by L-BFGS-B on log-parameters
    with the analytic gradient, from `num_starts` starts (the first a moment guess: μ half the
    observed rate of each mark, α = 0.5/K, β = 1/mean gap; the others it times log-normal
    noise drawn with `seed`); the best optimum wins. The result is built with
    `stationary=False`: a finite sample may favour ρ(α) >= 1.

    The first `conditioned` events of each sequence are history: they excite the later ones
    (and count in the compensator) but their own log λ_{k_i}(t_i) is left out of log L."""
    if isinstance(num_marks, bool) or not isinstance(num_marks, (int, np.integer)):
        raise ConfigError(f"expected an integer num_marks >= 1, got {num_marks!r}")
    if num_marks < 1 or num_starts < 1:
        raise ConfigError(
            f"expected num_marks >= 1 and num_starts >= 1, got {num_marks}, {num_starts}"
        )
    if isinstance(conditioned, bool) or not isinstance(conditioned, int) or conditioned < 0:
        raise ConfigError(f"expected an integer conditioned >= 0, got {conditioned!r}")
    batch = _Batch(sequences, num_marks, horizons, conditioned)
    if batch.num_events == 0 or batch.horizons.sum() <= 0:
        raise DataError("expected at least one event and a positive total duration to fit a hawkes")
    k = num_marks
    rate = np.maximum(batch.counts, 0.5) / batch.horizons.sum()
    gaps = np.diff(batch.times, axis=1)[batch.mask[:, 1:]]
    mean_gap = gaps.mean() if gaps.size and gaps.mean() > 0 else 1.0 / rate.sum()
    excitation = np.full(k * k, np.log(0.5 / k))
    guess = np.concatenate([np.log(0.5 * rate), excitation, [-np.log(mean_gap)]])
    rng = np.random.default_rng(seed)
    best = None
    for start in range(num_starts):
        theta0 = guess if start == 0 else guess + rng.normal(0.0, 0.5, guess.size)
        result = minimize(
            _negative_log_likelihood,
            np.clip(theta0, *LOG_BOUNDS),
            args=(batch, k),
            jac=True,
            method="L-BFGS-B",
            bounds=[LOG_BOUNDS] * guess.size,
            options={"maxiter": max_iter},
        )
        if best is None or result.fun < best.fun:
            best = result
    theta = best.x
    return Hawkes(
        np.exp(theta[:k]),
        np.exp(theta[k:-1]).reshape(k, k),
        float(np.exp(theta[-1])),
        stationary=False,
    )
