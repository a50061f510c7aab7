"""Renewal process with log-normal or gamma inter-event times and i.i.d. categorical marks.

The gaps τ_i = t_i - t_{i-1} (t_0 = 0: the process renews at time 0) are i.i.d. with density
f, survival S = 1 - F and hazard h = f / S; marks are i.i.d. with probabilities p [K]:

    λ_k(t) = p_k h(t - t_{N(t)}),     Λ(t_{i-1}, t_i) = -log S(τ_i),
    ℓ_i = log p_{k_i} + log h(τ_i) + log S(τ_i) = log p_{k_i} + log f(τ_i),
    survival term -Λ(t_n, T) = log S(T - t_n).

Gap laws (scipy's parameterization): ``lognormal``: log τ ~ N(log `scale`, `shape`²);
``gamma``: shape `shape`, scale `scale` (mean shape·scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from seqlab.data.point_processes.base import (
    PointProcess,
    categorical,
    check_sequence,
    check_simulation,
    iid_marks,
    mark_log_probs,
    positive,
)
from seqlab.errors import ConfigError

GAP_LAWS = {"lognormal": stats.lognorm, "gamma": stats.gamma}


class Renewal(PointProcess):
    """Renewal process: gaps from `distribution` (``lognormal`` or ``gamma``) with `shape`
    and `scale`, marks i.i.d. from `mark_probs` p [K]."""

    def __init__(
        self,
        mark_probs: np.ndarray | Sequence[float] = (1.0,),
        *,
        distribution: str = "lognormal",
        shape: float = 1.0,
        scale: float = 1.0,
    ) -> None:
        if distribution not in GAP_LAWS:
            raise ConfigError(
                f"expected a renewal distribution in {sorted(GAP_LAWS)}, got {distribution!r}"
            )
        self.mark_probs = categorical("renewal mark_probs", mark_probs)
        self.num_marks = self.mark_probs.size
        self.distribution = distribution
        self.shape = float(positive("renewal shape", shape))
        self.scale = float(positive("renewal scale", scale))
        self.gap = GAP_LAWS[distribution](self.shape, scale=self.scale)

    def intensity(self, query: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        times, marks = check_sequence(times, marks, self.num_marks, None)
        query = np.asarray(query, dtype=np.float64)
        last = np.concatenate([[0.0], times])[np.searchsorted(times, query, side="left")]
        age = query - last
        hazard = np.exp(self.gap.logpdf(age) - self.gap.logsf(age))
        return hazard[:, None] * self.mark_probs

    def simulate(
        self, rng: np.random.Generator, horizon: float, max_events: int
    ) -> tuple[np.ndarray, np.ndarray]:
        check_simulation(horizon, max_events)
        times = np.empty(0)
        while times.size < max_events and (times.size == 0 or times[-1] <= horizon):
            batch = max(8, min(max_events, 2 * times.size))
            last = times[-1] if times.size else 0.0
            times = np.concatenate([times, last + np.cumsum(self.gap.rvs(batch, random_state=rng))])
        times = times[times <= horizon][:max_events]
        return times, iid_marks(rng, self.mark_probs, times.size)

    def _terms(
        self, times: np.ndarray, marks: np.ndarray, horizon: float | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        gaps = np.diff(times, prepend=0.0)
        log_survival = self.gap.logsf(gaps)
        log_hazard = self.gap.logpdf(gaps) - log_survival
        log_intensity = mark_log_probs(self.mark_probs)[marks] + log_hazard
        tail = 0.0
        if horizon is not None:
            tail = -float(self.gap.logsf(horizon - (times[-1] if times.size else 0.0)))
        return log_intensity, -log_survival, tail
