"""Simulation against the likelihood: by the time-rescaling theorem the compensator increments
Λ(t_{i-1}, t_i) of a simulated sequence are i.i.d. Exp(1) (KS test, several seeds, and a wrong
model that the test rejects), and mean event counts and mark frequencies match theory."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from seqlab.data.point_processes import Hawkes, PointProcess, Renewal, SelfCorrecting

HAWKES = Hawkes([0.5, 0.3], [[0.3, 0.1], [0.2, 0.4]], 2.0)
SELF_CORRECTING = SelfCorrecting(1.5, 0.5, [0.3, 0.7])
RENEWAL = Renewal([0.6, 0.4], distribution="lognormal", shape=0.8, scale=0.5)


def draws(process: PointProcess, seed: int, count: int, horizon: float):
    rng = np.random.default_rng(seed)
    return [process.simulate(rng, horizon, 10_000) for _ in range(count)]


def rescaled(process: PointProcess, sequences) -> np.ndarray:
    return np.concatenate([process.compensator(t, m) for t, m in sequences])


@pytest.mark.parametrize("process", [HAWKES, SELF_CORRECTING, RENEWAL], ids=type)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compensator_increments_are_unit_exponential(process, seed):
    sequences = draws(process, seed, 10, 40.0)
    for times, marks in sequences:
        assert times.dtype == np.float64 and marks.dtype == np.int64
        assert np.all(np.diff(times) >= 0) and np.all((times >= 0) & (times <= 40.0))
    increments = rescaled(process, sequences)
    assert increments.size > 200
    assert stats.kstest(increments, "expon").pvalue > 1e-4


def test_time_rescaling_rejects_the_wrong_model():
    sequences = draws(HAWKES, 0, 10, 40.0)
    rate = sum(t.size for t, _ in sequences) / 400.0
    poisson = Hawkes([rate / 2, rate / 2], np.zeros((2, 2)), 1.0)
    assert stats.kstest(rescaled(poisson, sequences), "expon").pvalue < 1e-4


def test_poisson_counts():
    sequences = draws(Hawkes([0.4, 1.1], np.zeros((2, 2)), 1.0), 3, 200, 10.0)
    counts = np.array([np.bincount(m, minlength=2) for _, m in sequences]).mean(0)
    np.testing.assert_allclose(counts, [4.0, 11.0], atol=5 * np.sqrt(11.0 / 200))


def test_hawkes_stationary_rate():
    rate = np.linalg.solve(np.eye(2) - HAWKES.alpha, HAWKES.mu)
    sequences = draws(HAWKES, 4, 40, 200.0)
    counts = np.array([np.bincount(m, minlength=2) for _, m in sequences]).mean(0) / 200.0
    np.testing.assert_allclose(counts, rate, rtol=0.12)


def test_self_correcting_rate_and_marks():
    # N(t) stays near μ t / α: each event lowers log λ by α, time raises it by μ.
    sequences = draws(SELF_CORRECTING, 5, 5, 100.0)
    counts = np.array([t.size for t, _ in sequences])
    np.testing.assert_allclose(counts / 100.0, 1.5 / 0.5, rtol=0.05)
    frequencies = np.bincount(np.concatenate([m for _, m in sequences]), minlength=2) / counts.sum()
    np.testing.assert_allclose(frequencies, [0.3, 0.7], atol=0.05)


def test_renewal_rate():
    mean_gap = 0.5 * np.exp(0.8**2 / 2)
    sequences = draws(RENEWAL, 6, 10, 100.0)
    counts = np.array([t.size for t, _ in sequences])
    np.testing.assert_allclose(counts.mean() / 100.0, 1 / mean_gap, rtol=0.05)


@pytest.mark.parametrize("process", [HAWKES, SELF_CORRECTING, RENEWAL], ids=type)
def test_max_events_and_seeding(process):
    times, marks = process.simulate(np.random.default_rng(7), 1e6, 25)
    assert times.size == marks.size == 25
    again = process.simulate(np.random.default_rng(7), 1e6, 25)
    np.testing.assert_array_equal(times, again[0])
    np.testing.assert_array_equal(marks, again[1])
    empty = process.simulate(np.random.default_rng(7), 5.0, 0)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
