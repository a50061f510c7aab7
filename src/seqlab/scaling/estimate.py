"""Point estimates with their bootstrap intervals, and the percentile interval itself.

A parameter θ fitted on the data, refitted on B bootstrap resamples (θ*_1..θ*_B), gets the
percentile interval at level 1 − 2q (q = (1 − level) / 2):

    [quantile(θ*, q), quantile(θ*, 1 − q)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

LEVEL = 0.95


class Interval(NamedTuple):
    """A confidence interval [low, high]."""

    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Estimate:
    """A fitted number and its interval (`ci`; None when the fit ran no bootstrap or every
    refit failed)."""

    value: float
    ci: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        ci = None if self.ci is None else [_json_float(self.ci.low), _json_float(self.ci.high)]
        return {"value": _json_float(self.value), "ci": ci}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> Interval | None:
    """The percentile interval of the finite `samples`; None when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    q = (1 - level) / 2
    low, high = np.quantile(finite, [q, 1 - q])
    return Interval(float(low), float(high))


def estimate(value: float, samples: np.ndarray | None, level: float = LEVEL) -> Estimate:
    """`value` with the percentile interval of its bootstrap `samples` (None: no interval)."""
    ci = None if samples is None else percentile_interval(samples, level)
    return Estimate(float(value), ci)


def _json_float(x: float) -> float | None:
    """JSON has no NaN or infinity: they become null."""
    return float(x) if math.isfinite(x) else None
