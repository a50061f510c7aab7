"""Marked temporal point processes on [0, T]: the interface and the checks every process shares.

A marked process with K marks is given by its conditional intensities λ_k(t) = λ_k(t | H_t),
k = 0 .. K-1, where the history H_t holds the events strictly before t. For events
0 < t_1 <= .. <= t_n <= T with marks k_1 .. k_n the log-likelihood is

    log L = Σ_i log λ_{k_i}(t_i) - ∫_0^T Σ_k λ_k(s) ds,

which `PointProcess` splits per event (t_0 = 0):

    ℓ_i = log λ_{k_i}(t_i) - Λ(t_{i-1}, t_i),       Λ(a, b) = ∫_a^b Σ_k λ_k(s) ds,

plus the survival term -Λ(t_n, T) that no event owns. `log_likelihood` returns [ℓ_1 .. ℓ_n],
`survival` the last term, `total_log_likelihood` their sum. The compensator increments
Λ(t_{i-1}, t_i) are i.i.d. Exp(1) for sequences drawn from the process (time-rescaling
theorem); `compensator` returns them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from seqlab.errors import ConfigError, DataError


class PointProcess(ABC):
    """A marked temporal point process with `num_marks` marks, started empty at time 0.

    Subclasses implement `intensity`, `simulate` and `_terms`; the likelihood methods check
    their inputs and assemble the terms."""

    num_marks: int

    @abstractmethod
    def simulate(
        self, rng: np.random.Generator, horizon: float, max_events: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence on [0, `horizon`]: times [n] float64 ascending and marks [n] int64,
        stopped early after `max_events` events (then the draw is the first `max_events`
        events of a sequence, not a sequence on the whole horizon)."""

    @abstractmethod
    def intensity(self, query: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """λ_k(s) [q, K] at the query times `query` [q] given the events (`times`, `marks`);
        each query sees only the events strictly before it."""

    @abstractmethod
    def _terms(
        self, times: np.ndarray, marks: np.ndarray, horizon: float | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(log λ_{k_i}(t_i) [n], Λ(t_{i-1}, t_i) [n], Λ(t_n, T)) for a checked sequence;
        the last is 0.0 when `horizon` is None."""

    def log_likelihood(
        self, times: np.ndarray, marks: np.ndarray, horizon: float | None = None
    ) -> np.ndarray:
        """Per-event log-likelihood [n]: ℓ_i = log λ_{k_i}(t_i) - Λ(t_{i-1}, t_i), t_0 = 0.
        `horizon`, when given, is only checked (every event must lie in [0, horizon])."""
        times, marks = check_sequence(times, marks, self.num_marks, horizon)
        log_intensity, increments, _ = self._terms(times, marks, None)
        return log_intensity - increments

    def survival(self, times: np.ndarray, marks: np.ndarray, horizon: float) -> float:
        """The survival term -Λ(t_n, T) = -∫_{t_n}^T Σ_k λ_k(s) ds (t_n = 0 when empty)."""
        times, marks = check_sequence(times, marks, self.num_marks, horizon)
        return -float(self._terms(times, marks, float(horizon))[2])

    def total_log_likelihood(self, times: np.ndarray, marks: np.ndarray, horizon: float) -> float:
        """log L of the sequence observed on [0, horizon]: Σ_i ℓ_i - Λ(t_n, T)."""
        times, marks = check_sequence(times, marks, self.num_marks, horizon)
        log_intensity, increments, tail = self._terms(times, marks, float(horizon))
        return float(np.sum(log_intensity - increments) - tail)

    def compensator(self, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """The increments Λ(t_{i-1}, t_i) [n] (t_0 = 0); Exp(1) under the process."""
        times, marks = check_sequence(times, marks, self.num_marks, None)
        return self._terms(times, marks, None)[1]


def check_sequence(
    times: np.ndarray, marks: np.ndarray, num_marks: int, horizon: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """`times` as float64 [n] finite, >= 0, non-decreasing and <= `horizon`; `marks` as int64
    [n] in [0, num_marks); a `DataError` otherwise."""
    t = np.asarray(times, dtype=np.float64)
    m = np.asarray(marks)
    if t.ndim != 1 or m.shape != t.shape:
        raise DataError(f"expected times and marks of one shape [n], got {t.shape} and {m.shape}")
    if m.size and not np.issubdtype(m.dtype, np.integer):
        raise DataError(f"expected integer marks, got dtype {m.dtype}")
    m = m.astype(np.int64)
    if not np.all(np.isfinite(t)) or (t.size and (t[0] < 0 or np.any(np.diff(t) < 0))):
        raise DataError("expected finite event times >= 0 in non-decreasing order")
    if m.size and (m.min() < 0 or m.max() >= num_marks):
        raise DataError(f"expected marks in [0, {num_marks}), got {m.min()} .. {m.max()}")
    if horizon is not None:
        if not np.isfinite(horizon) or horizon < 0:
            raise DataError(f"expected a finite horizon >= 0, got {horizon}")
        if t.size and t[-1] > horizon:
            raise DataError(f"event time {t[-1]} lies after the horizon {horizon}")
    return t, m


def check_simulation(horizon: float, max_events: int) -> None:
    """A `ConfigError` unless horizon is finite and > 0 and max_events an int >= 0."""
    if not np.isfinite(horizon) or horizon <= 0:
        raise ConfigError(f"expected a finite horizon > 0, got {horizon}")
    if isinstance(max_events, bool) or not isinstance(max_events, (int, np.integer)):
        raise ConfigError(f"expected an integer max_events, got {max_events!r}")
    if max_events < 0:
        raise ConfigError(f"expected max_events >= 0, got {max_events}")


def positive(name: str, value: float | np.ndarray, *, strict: bool = True) -> np.ndarray:
    """`value` as a float64 array, all finite and > 0 (>= 0 when not `strict`); a
    `ConfigError` otherwise."""
    a = np.asarray(value, dtype=np.float64)
    bad = ~np.isfinite(a) | ((a <= 0) if strict else (a < 0))
    if np.any(bad):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"expected {name} finite and {bound}, got {a.tolist()}")
    return a


def categorical(name: str, probs: np.ndarray | list[float]) -> np.ndarray:
    """`probs` as float64 [K], K >= 1, entries >= 0 summing to 1 (within 1e-9); a
    `ConfigError` otherwise."""
    p = positive(name, probs, strict=False)
    if p.ndim != 1 or p.size == 0 or abs(p.sum() - 1.0) > 1e-9:
        raise ConfigError(f"expected {name} a probability vector [K] summing to 1, got {p}")
    return p


def iid_marks(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """Marks int64 [n] drawn i.i.d. from the categorical `probs` [K]."""
    return rng.choice(probs.size, size=n, p=probs).astype(np.int64)


def mark_log_probs(probs: np.ndarray) -> np.ndarray:
    """log p [K] with log 0 = -inf, without a numpy warning."""
    with np.errstate(divide="ignore"):
        return np.log(probs)
