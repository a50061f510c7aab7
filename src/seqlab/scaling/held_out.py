"""Does a fit extrapolate? Refit without the largest-scale runs and predict them.

The points are ordered by their scale (`fit.scale()`: compute C for L(C) and for
L(N, D) the runs' 6·N·D; x for other power laws). With k held out (`holdout`: a count, or a
fraction of the points rounded to the nearest count, at least 1; default 20%), every point
whose scale is at least the k-th largest is held out (ties at the threshold go together), the
fit is redone without them (same options, no bootstrap), and for each held-out point

    relative error = |L̂ − L| / L.

The fit *predicts* when the mean relative error is below `tolerance` (default 0.05: 5%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from seqlab.errors import ConfigError, DataError

HOLDOUT = 0.2
TOLERANCE = 0.05


class Refittable(Protocol):
    def scale(self) -> np.ndarray: ...

    def observed(self) -> np.ndarray: ...

    @property
    def params(self) -> np.ndarray: ...

    def predict_points(self, mask: np.ndarray, params: np.ndarray | None = None) -> np.ndarray: ...

    def refit(self, keep: np.ndarray) -> Refittable: ...


@dataclass(frozen=True)
class HeldOutCheck:
    """The held-out points (their scale, observed and predicted loss, relative errors), the
    summary errors and the verdict."""

    n_fit: int
    scale: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    relative_error: np.ndarray
    mean_relative_error: float
    max_relative_error: float
    tolerance: float
    predicts: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_fit": self.n_fit,
            "n_held_out": len(self.scale),
            "scale": self.scale.tolist(),
            "observed": self.observed.tolist(),
            "predicted": self.predicted.tolist(),
            "relative_error": self.relative_error.tolist(),
            "mean_relative_error": self.mean_relative_error,
            "max_relative_error": self.max_relative_error,
            "tolerance": self.tolerance,
            "predicts": self.predicts,
        }


def held_out_check(
    fit: Refittable, holdout: float | int = HOLDOUT, tolerance: float = TOLERANCE
) -> HeldOutCheck:
    """Refit `fit` (a PowerLawFit or ChinchillaFit) without its largest-scale points and
    report how well it predicts them (see the module docstring)."""
    scale = fit.scale()
    count = _count(holdout, len(scale))
    threshold = np.sort(scale)[-count]
    held = scale >= threshold
    if held.all():
        raise DataError(f"holdout {holdout!r} leaves no point to fit")
    refitted = fit.refit(~held)
    observed = fit.observed()[held]
    predicted = np.asarray(fit.predict_points(held, refitted.params), dtype=float)
    errors = np.abs(predicted - observed) / observed
    mean = float(np.mean(errors))
    return HeldOutCheck(
        int((~held).sum()),
        scale[held],
        observed,
        predicted,
        errors,
        mean,
        float(np.max(errors)),
        tolerance,
        bool(mean < tolerance),
    )


def _count(holdout: float | int, n: int) -> int:
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise ConfigError(f"expected holdout as a count or a fraction, got {holdout!r}")
    if isinstance(holdout, int):
        if not 1 <= holdout < n:
            raise ConfigError(f"expected a holdout count in [1, {n - 1}], got {holdout}")
        return holdout
    if not 0 < holdout < 1:
        raise ConfigError(f"expected a holdout fraction in (0, 1), got {holdout}")
    return max(1, round(holdout * n))
