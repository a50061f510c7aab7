"""Self-correcting process (Isham and Westcott) with i.i.d. categorical marks.

The ground intensity grows steadily and drops by a factor e^{-α} at each event:

    λ(t) = exp(μ t - α N(t)),    λ_k(t) = p_k λ(t),

with N(t) the number of events strictly before t, μ > 0, α > 0 and mark probabilities p [K].
Between events N is constant, so the compensator is closed form: with N = i - 1 on
(t_{i-1}, t_i],

    Λ(t_{i-1}, t_i) = exp(μ t_{i-1} - α (i-1)) · (e^{μ Δ_i} - 1) / μ,   Δ_i = t_i - t_{i-1},

and the per-event log-likelihood is ℓ_i = log p_{k_i} + μ t_i - α (i-1) - Λ(t_{i-1}, t_i).
`simulate` inverts it exactly: after t with N events it draws E ~ Exp(1) and solves
Λ(t, t') = E, i.e. t' = t + log(1 + μ E e^{α N - μ t}) / μ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqlab.data.point_processes.base import (
    PointProcess,
    categorical,
    check_sequence,
    check_simulation,
    iid_marks,
    mark_log_probs,
    positive,
)


class SelfCorrecting(PointProcess):
    """λ_k(t) = p_k exp(μ t - α N(t)) with `mu` > 0, `alpha` > 0 and `mark_probs` p [K]."""

    def __init__(
        self, mu: float, alpha: float, mark_probs: np.ndarray | Sequence[float] = (1.0,)
    ) -> None:
        self.mu = float(positive("self-correcting mu", mu))
        self.alpha = float(positive("self-correcting alpha", alpha))
        self.mark_probs = categorical("self-correcting mark_probs", mark_probs)
        self.num_marks = self.mark_probs.size

    def intensity(self, query: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        times, marks = check_sequence(times, marks, self.num_marks, None)
        query = np.asarray(query, dtype=np.float64)
        before = np.searchsorted(times, query, side="left")
        return np.exp(self.mu * query - self.alpha * before)[:, None] * self.mark_probs

    def simulate(
        self, rng: np.random.Generator, horizon: float, max_events: int
    ) -> tuple[np.ndarray, np.ndarray]:
        check_simulation(horizon, max_events)
        times: list[float] = []
        t = 0.0
        while len(times) < max_events:
            exponent = self.alpha * len(times) - self.mu * t + np.log(self.mu * rng.exponential())
            t += np.logaddexp(0.0, exponent) / self.mu
            if t > horizon:
                break
            times.append(t)
        return np.asarray(times, dtype=np.float64), iid_marks(rng, self.mark_probs, len(times))

    def _terms(
        self, times: np.ndarray, marks: np.ndarray, horizon: float | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        n = times.size
        start = np.concatenate([[0.0], times])
        level = self.mu * start - self.alpha * np.arange(n + 1)
        increments = np.exp(level[:-1]) * np.expm1(self.mu * np.diff(start)) / self.mu
        log_intensity = mark_log_probs(self.mark_probs)[marks] + self.mu * times
        log_intensity -= self.alpha * np.arange(n)
        tail = 0.0
        if horizon is not None:
            tail = float(np.exp(level[-1]) * np.expm1(self.mu * (horizon - start[-1])) / self.mu)
        return log_intensity, increments, tail
