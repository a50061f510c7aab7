"""Bad parameters and bad sequences raise seqlab's errors with one line."""

from __future__ import annotations

import numpy as np
import pytest

from seqlab.data.point_processes import (
    Hawkes,
    Renewal,
    SelfCorrecting,
    fit_hawkes,
    mean_otd,
    otd,
    t_map,
)
from seqlab.errors import ConfigError, DataError

GOOD = Hawkes([0.5, 0.3], [[0.3, 0.1], [0.2, 0.4]], 2.0)
T, M = np.array([0.5, 1.0]), np.array([0, 1])

CONFIG = {
    "negative mu": lambda: Hawkes([-0.1, 0.3], np.zeros((2, 2)), 1.0),
    "negative alpha": lambda: Hawkes([0.1, 0.3], [[0.1, -0.1], [0.0, 0.1]], 1.0),
    "alpha shape": lambda: Hawkes([0.1, 0.3], [[0.1, 0.1]], 1.0),
    "zero beta": lambda: Hawkes([0.1], [[0.1]], 0.0),
    "explosive": lambda: Hawkes([0.1, 0.1], [[0.6, 0.5], [0.5, 0.6]], 1.0),
    "nan mu": lambda: SelfCorrecting(float("nan"), 1.0),
    "negative alpha sc": lambda: SelfCorrecting(1.0, -0.5),
    "probs sum": lambda: SelfCorrecting(1.0, 1.0, [0.5, 0.6]),
    "unknown law": lambda: Renewal(distribution="weibull"),
    "negative scale": lambda: Renewal(scale=-1.0),
    "negative probs": lambda: Renewal([1.5, -0.5]),
    "horizon": lambda: GOOD.simulate(np.random.default_rng(0), 0.0, 10),
    "max events": lambda: GOOD.simulate(np.random.default_rng(0), 1.0, -1),
    "float max events": lambda: GOOD.simulate(np.random.default_rng(0), 1.0, 2.5),
    "otd cost": lambda: otd(T, M, T, M, insert_cost=-1.0, delete_cost=1.0),
    "otd steps": lambda: mean_otd([(T, M)], [(T, M)], insert_cost=1, delete_cost=1, steps=0),
    "t-map horizon": lambda: t_map([0.0], [(T, np.eye(2)[M])], [(T, M)], horizon=0, deltas=[1]),
    "t-map deltas": lambda: t_map([0.0], [(T, np.eye(2)[M])], [(T, M)], horizon=1, deltas=[]),
    "fit marks": lambda: fit_hawkes([(T, M)], 0),
}

DATA = {
    "descending": lambda: GOOD.log_likelihood(T[::-1], M),
    "negative time": lambda: GOOD.log_likelihood(np.array([-1.0, 1.0]), M),
    "mark range": lambda: GOOD.log_likelihood(T, np.array([0, 2])),
    "float marks": lambda: GOOD.log_likelihood(T, np.array([0.0, 1.0])),
    "shape": lambda: GOOD.log_likelihood(T, M[:1]),
    "after horizon": lambda: GOOD.survival(T, M, 0.7),
    "fit empty": lambda: fit_hawkes([(T[:0], M[:0])], 2),
    "fit horizons": lambda: fit_hawkes([(T, M)], 2, horizons=[1.0, 2.0]),
    "otd lengths": lambda: mean_otd([(T, M)], [], insert_cost=1, delete_cost=1),
    "t-map marks": lambda: t_map([0.0], [(T, np.eye(2)[M])], [(T, M + 1)], horizon=1, deltas=[1]),
    "t-map scores": lambda: t_map([0.0], [(T, np.eye(2)[:1])], [(T, M)], horizon=1, deltas=[1]),
    "t-map no targets": lambda: t_map(
        [0.0], [(T, np.eye(2)[M])], [(T + 5, M)], horizon=1, deltas=[1]
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIG))
def test_bad_parameters_raise_config_error(name):
    with pytest.raises(ConfigError) as info:
        CONFIG[name]()
    assert "\n" not in str(info.value) and "expected" in str(info.value)


@pytest.mark.parametrize("name", sorted(DATA))
def test_bad_sequences_raise_data_error(name):
    with pytest.raises(DataError) as info:
        DATA[name]()
    assert "\n" not in str(info.value)


def test_non_stationary_allowed_when_asked():
    assert Hawkes([0.1], [[1.5]], 1.0, stationary=False).branching_ratio == pytest.approx(1.5)
