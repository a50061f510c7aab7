"""Per-event log-likelihoods and survival terms of the three processes against a brute-force
reference: the intensity integrated numerically (scipy quad) between events, on odd small
sequences, and the Poisson special case of the Hawkes process in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from seqlab.data.point_processes import Hawkes, PointProcess, Renewal, SelfCorrecting

HORIZON = 4.3


def processes() -> dict[str, PointProcess]:
    return {
        "hawkes": Hawkes([0.4, 0.9, 0.2], [[0.2, 0.1, 0.3], [0.0, 0.4, 0.1], [0.3, 0.2, 0.1]], 1.7),
        "self_correcting": SelfCorrecting(0.8, 0.6, [0.2, 0.5, 0.3]),
        "renewal_lognormal": Renewal(
            [0.2, 0.5, 0.3], distribution="lognormal", shape=0.7, scale=0.6
        ),
        "renewal_gamma": Renewal([0.2, 0.5, 0.3], distribution="gamma", shape=1.8, scale=0.4),
    }


SEQUENCES = [
    (np.array([]), np.array([], dtype=np.int64)),
    (np.array([0.37]), np.array([2])),
    (np.array([0.21, 0.5, 0.51, 1.9, 2.05, 3.3, 4.1]), np.array([1, 0, 2, 2, 1, 0, 1])),
]


def reference(process: PointProcess, times, marks, horizon):
    """(ℓ_i [n], -Λ(t_n, T)) with log λ read off `intensity` and Λ integrated by quad."""

    def total(s: float) -> float:
        return float(process.intensity(np.array([s]), times, marks).sum())

    edges = np.concatenate([[0.0], times, [horizon]])
    integrals = [
        quad(total, a, b, epsabs=1e-11, epsrel=1e-11)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    rates = process.intensity(times, times, marks)[np.arange(times.size), marks]
    return np.log(rates) - np.array(integrals[:-1]), -integrals[-1]


@pytest.mark.parametrize("name", sorted(processes()))
@pytest.mark.parametrize("index", range(len(SEQUENCES)))
def test_log_likelihood_matches_numerical_integration(name, index):
    process = processes()[name]
    times, marks = SEQUENCES[index]
    events, survival = reference(process, times, marks, HORIZON)
    got = process.log_likelihood(times, marks, HORIZON)
    assert got.shape == times.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, events, rtol=1e-7, atol=1e-8)
    assert process.survival(times, marks, HORIZON) == pytest.approx(survival, rel=1e-7, abs=1e-9)
    total = process.total_log_likelihood(times, marks, HORIZON)
    assert total == pytest.approx(events.sum() + survival, rel=1e-7, abs=1e-8)


def test_hawkes_intensity_by_hand():
    process = Hawkes([0.5], [[0.4]], 2.0)
    got = process.intensity(np.array([0.5, 1.0, 2.0]), np.array([1.0]), np.array([0]))[:, 0]
    np.testing.assert_allclose(got, [0.5, 0.5, 0.5 + 0.4 * 2.0 * np.exp(-2.0)])


def test_poisson_special_case_closed_form():
    mu = np.array([0.3, 1.1])
    process = Hawkes(mu, np.zeros((2, 2)), 3.0)
    times, marks = np.array([0.4, 1.0, 2.5]), np.array([1, 0, 1])
    gaps = np.diff(times, prepend=0.0)
    np.testing.assert_allclose(
        process.log_likelihood(times, marks), np.log(mu[marks]) - mu.sum() * gaps, rtol=1e-12
    )
    assert process.survival(times, marks, 4.0) == pytest.approx(-mu.sum() * 1.5, rel=1e-12)


def test_renewal_event_term_is_log_density_plus_mark_log_prob():
    process = Renewal([0.25, 0.75], distribution="gamma", shape=2.5, scale=0.3)
    times, marks = np.array([0.2, 0.9, 1.0]), np.array([1, 0, 1])
    gaps = np.array([0.2, 0.7, 0.1])
    from scipy.stats import gamma

    expected = gamma(2.5, scale=0.3).logpdf(gaps) + np.log([0.75, 0.25, 0.75])
    np.testing.assert_allclose(process.log_likelihood(times, marks), expected, rtol=1e-10)


def test_self_correcting_by_hand():
    mu, alpha = 0.7, 0.4
    process = SelfCorrecting(mu, alpha, [0.5, 0.5])
    times, marks = np.array([1.0, 1.5]), np.array([0, 1])
    first = np.log(0.5) + mu * 1.0 - (np.exp(mu * 1.0) - 1) / mu
    second = np.log(0.5) + mu * 1.5 - alpha - np.exp(-alpha) * (np.exp(mu * 1.5) - np.exp(mu)) / mu
    np.testing.assert_allclose(process.log_likelihood(times, marks), [first, second], rtol=1e-12)
