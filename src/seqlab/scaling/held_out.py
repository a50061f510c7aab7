"""Does a fit extrapolate? Refit without the largest-scale runs and predict them.

The units held out are ordered by their scale (`fit.scale()`): for L(C) through the frontier
the runs, by total compute; for L(N, D) the runs, by 6·N·D; for other power laws the points,
by x. With k held out (`holdout`: a count, or a fraction of the units rounded to the nearest
count, at least 1; default 20%), every unit whose scale is at least the k-th largest is held
out (ties at the threshold go together), the fit is redone without them (same options, no
bootstrap; for L(C) the frontier is rebuilt from the other runs), and for each point the
held-out units give (`fit.held_points`: for L(C) the corners of the full frontier that the
held-out runs reach, else the held-out points themselves)

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

    def point_scale(self) -> np.ndarray: ...

    def observed(self) -> np.ndarray: ...

    def held_points(self, held: np.ndarray) -> np.ndarray: ...

    @property
    def params(self) -> np.ndarray: ...

    def predict_points(self, mask: np.ndarray, params: np.ndarray | None = None) -> np.ndarray: ...

    def refit(self, keep: np.ndarray) -> Refittable: ...


@dataclass(frozen=True)
class HeldOutCheck:
    """The units fitted (`n_fit`), the points predicted (their scale, observed and predicted
    loss, relative errors), the summary errors and the verdict."""

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
    """Refit `fit` (a PowerLawFit or ChinchillaFit) without its largest-scale units and
    report how well it predicts them (see the module docstring)."""
    scale = fit.scale()
    count = _count(holdout, len(scale))
    threshold = np.sort(scale)[-count]
    held = scale >= threshold
    if held.all():
        raise DataError(f"holdout {holdout!r} leaves nothing to fit")
    points = fit.held_points(held)
    refitted = fit.refit(~held)
    observed = fit.observed()[points]
    predicted = np.asarray(fit.predict_points(points, refitted.params), dtype=float)
    errors = np.abs(predicted - observed) / observed
    mean = float(np.mean(errors))
    return HeldOutCheck(
        int((~held).sum()),
        fit.point_scale()[points],
        observed,
        predicted,
        errors,
        mean,
        float(np.max(errors)),
        tolerance,
        bool(mean < tolerance),
    )


def validate_holdout(holdout: float | int) -> None:
    """Raise ConfigError unless `holdout` is a count >= 1 or a fraction in (0, 1)."""
    _count(holdout, None)


def _count(holdout: float | int, n: int | None) -> int:
    """The number of units held out of `n` (None: only check `holdout`)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise ConfigError(f"expected holdout as a count or a fraction, got {holdout!r}")
    if isinstance(holdout, int):
        if holdout < 1 or (n is not None and holdout >= n):
            want = ">= 1" if n is None else f"in [1, {n - 1}]"
            raise ConfigError(f"expected a holdout count {want}, got {holdout}")
        return holdout
    if not 0 < holdout < 1:
        raise ConfigError(f"expected a holdout fraction in (0, 1), got {holdout}")
    return 0 if n is None else max(1, round(holdout * n))
