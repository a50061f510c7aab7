"""`fit_hawkes`: its analytic gradient against finite differences, recovery of the parameters of
a simulated 2-mark process, and a held-out log-likelihood at least that of the Poisson fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from seqlab.data.point_processes import Hawkes, fit_hawkes
from seqlab.data.point_processes.hawkes import _Batch, _negative_log_likelihood
from seqlab.errors import ConfigError

TRUE = Hawkes([0.5, 0.3], [[0.3, 0.1], [0.2, 0.4]], 2.0)
HORIZON = 50.0


def checked_objective(sequences, horizons, rng, conditioned=0) -> tuple[_Batch, float, Hawkes]:
    """The fit's objective at parameters θ ~ N(0, 0.4²) [7] drawn from `rng`, its analytic
    gradient checked against finite differences: (the batch, the value, the Hawkes model
    of θ)."""
    batch = _Batch(sequences, 2, horizons, conditioned=conditioned)
    theta = rng.normal(0.0, 0.4, 7)
    value, grad = _negative_log_likelihood(theta, batch, 2)
    numeric = approx_fprime(theta, lambda x: _negative_log_likelihood(x, batch, 2)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)
    model = Hawkes(
        np.exp(theta[:2]), np.exp(theta[2:6]).reshape(2, 2), np.exp(theta[6]), stationary=False
    )
    return batch, value, model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    return [TRUE.simulate(rng, HORIZON, 10_000) for _ in range(80)]


@pytest.fixture(scope="module")
def fitted(data):
    return fit_hawkes(data[:60], 2, horizons=[HORIZON] * 60)


@pytest.mark.parametrize("horizons", [None, [6.0, 9.5, 7.0]])
def test_gradient_matches_finite_differences(horizons):
    rng = np.random.default_rng(0)
    sequences = [TRUE.simulate(rng, 6.0, 10_000) for _ in range(3)]
    sequences[1] = (np.array([]), np.array([], dtype=np.int64))
    batch, value, model = checked_objective(sequences, horizons, rng)
    ends = horizons or [t[-1] if t.size else 0.0 for t, _ in sequences]
    pairs = zip(sequences, ends, strict=True)
    total = sum(model.total_log_likelihood(t, m, h) for (t, m), h in pairs)
    assert -value * batch.num_events == pytest.approx(total, rel=1e-10)


def test_fit_recovers_parameters(fitted):
    np.testing.assert_allclose(fitted.mu, TRUE.mu, atol=0.15)
    np.testing.assert_allclose(fitted.alpha, TRUE.alpha, atol=0.12)
    assert fitted.beta == pytest.approx(TRUE.beta, rel=0.3)


def test_fit_beats_poisson_on_held_out_data(data, fitted):
    train, test = data[:60], data[60:]
    counts = np.bincount(np.concatenate([m for _, m in train]), minlength=2)
    poisson = Hawkes(counts / (HORIZON * len(train)), np.zeros((2, 2)), 1.0)

    def held_out(model):
        return sum(model.total_log_likelihood(t, m, HORIZON) for t, m in test)

    events = sum(t.size for t, _ in test)
    assert held_out(fitted) >= held_out(poisson) + 0.02 * events
    assert held_out(fitted) >= held_out(TRUE) - 0.01 * events


def test_fit_without_horizons_runs_and_is_sane(data):
    model = fit_hawkes(data[:20], 2, num_starts=1)
    assert model.num_marks == 2 and model.branching_ratio < 1.5


def test_conditioned_events_excite_but_are_not_scored():
    """With `conditioned=1` the objective is log L less each sequence's first log λ_{k_1}(t_1)
    (the origin event is history), and its gradient is still exact."""
    rng = np.random.default_rng(3)
    sequences = [TRUE.simulate(rng, 6.0, 10_000) for _ in range(3)]
    sequences = [(t - t[0], m) for t, m in sequences]  # each starts at its origin event
    horizons = [6.0, 6.0, 6.0]
    batch, value, model = checked_objective(sequences, horizons, rng, conditioned=1)
    total = sum(
        model.total_log_likelihood(t, m, h) - np.log(model.mu[m[0]])  # λ at the origin is μ
        for (t, m), h in zip(sequences, horizons, strict=True)
    )
    assert batch.num_events == sum(t.size - 1 for t, _ in sequences)
    assert -value * batch.num_events == pytest.approx(total, rel=1e-10)
    with pytest.raises(ConfigError, match="conditioned"):
        fit_hawkes(sequences, 2, conditioned=-1)
