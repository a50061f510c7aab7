"""A saturating power law y = E + A·x^(−α), fitted in log space with bootstrap intervals.

Used for the loss against compute through the compute-efficient frontier, L(C) = E + A·C^(−α)
(`fit_frontier_law`), and for accuracy-type data such as the error against state size
(`fit_power_law`). The fit (see `seqlab.scaling.objective`) minimises the mean of ρ(r_i),
r_i = log ŷ_i − log y_i, Huber with δ = 1e-3 by default (Hoffmann et al. 2022) or squares,
over E = exp(e) > 0, A = exp(a) > 0, α ≥ 0, with x divided by its geometric mean x_ref
while fitting (A = exp(a)·x_ref^α). L-BFGS-B runs from the `n_starts` best points of a grid
over (e, a, α); bootstrap refits start from the full-data optimum and the best grid start.

The held-out check (`seqlab.scaling.held_out`) of a plain fit holds out the points of largest
x. That of an L(C) frontier fit holds out whole *runs*, those of largest total compute: the
frontier is rebuilt from the other runs' curves and refitted, and the points predicted are
the corners of the full frontier that the held-out runs reach (none: the check is refused).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from seqlab.errors import ConfigError, DataError, ShapeError
from seqlab.scaling import objective
from seqlab.scaling.bootstrap import N_BOOT, Bootstrap, group_indices, run_bootstrap
from seqlab.scaling.estimate import LEVEL, Estimate, estimate
from seqlab.scaling.frontier import Curves, Frontier, _frontier, curve_arrays
from seqlab.scaling.objective import RefitFailed

NAMES = ("E", "A", "alpha")
N_STARTS = 8
BOOT_STARTS = 2  # the full-data optimum and the best start of the grid
_E_FRACTIONS = (1e-3, 0.25, 0.5, 0.75, 0.95)  # of min y
_A_FRACTIONS = (0.03, 0.1, 0.3, 1.0, 3.0)  # of the geometric mean of y, at x = x_ref
_ALPHAS = (0.03, 0.1, 0.3, 0.6, 1.0, 2.0)


@dataclass(frozen=True)
class FrontierRuns:
    """The runs an L(C) fit's frontier was built from: their keys, curves (k, 2) of (C, L),
    and total compute (what the held-out check orders them by)."""

    keys: tuple[Any, ...]
    curves: tuple[np.ndarray, ...]
    compute: np.ndarray


@dataclass(frozen=True)
class PowerLawFit:
    """y = E + A·x^(−α) fitted to (x, y): each parameter with its bootstrap interval, the
    objective at the optimum (mean ρ of the log residuals), the RMS log residual, the data,
    the options to refit with, the bootstrap, and for L(C) the frontier it was fitted to."""

    E: Estimate
    A: Estimate
    alpha: Estimate
    objective: float
    rms_log_residual: float
    x: np.ndarray
    y: np.ndarray
    criterion: objective.Criterion
    delta: float
    bootstrap: Bootstrap | None
    frontier: Frontier | None = None
    runs: FrontierRuns | None = None

    @property
    def params(self) -> np.ndarray:
        """(E, A, α): the order of `bootstrap.samples`' columns."""
        return np.array([self.E.value, self.A.value, self.alpha.value])

    def predict(self, x: np.ndarray | float, params: np.ndarray | None = None) -> np.ndarray:
        """E + A·x^(−α) at the fitted parameters, or at `params` (E, A, α)."""
        e, a, alpha = self.params if params is None else params
        return power_law(np.asarray(x, dtype=float), e, a, alpha)

    def loss_at_compute(
        self, c: np.ndarray | float, params: np.ndarray | None = None
    ) -> np.ndarray:
        """L(C), for a fit whose x is compute (what `crossover` compares)."""
        return self.predict(c, params)

    def scale(self) -> np.ndarray:
        """What `held_out_check` orders and holds out by: each run's total compute for an
        L(C) frontier fit, else each point's x."""
        return self.x if self.runs is None else self.runs.compute

    def point_scale(self) -> np.ndarray:
        return self.x

    def observed(self) -> np.ndarray:
        return self.y

    def held_points(self, held: np.ndarray) -> np.ndarray:
        """The points (a mask over x) to predict when the units `held` (a mask over `scale()`)
        are held out: the same points, or for a frontier fit the corners the held runs
        reach."""
        if self.runs is None or self.frontier is None:
            return held
        held_keys = {key for key, h in zip(self.runs.keys, held, strict=True) if h}
        points = np.array([run in held_keys for run in self.frontier.run], dtype=bool)
        if not points.any():
            raise DataError("the held-out runs reach no corner of the frontier: nothing to predict")
        return points

    def predict_points(self, mask: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        return self.predict(self.x[mask], params)

    def refit(self, keep: np.ndarray) -> PowerLawFit:
        """The same fit, without bootstrap, on the units `keep` (a boolean mask over
        `scale()`): the points, or for a frontier fit the runs (their frontier rebuilt)."""
        if self.runs is None:
            return fit_power_law(
                self.x[keep], self.y[keep], criterion=self.criterion, delta=self.delta, n_boot=0
            )
        kept = np.flatnonzero(keep)
        return fit_frontier_law(
            {self.runs.keys[i]: self.runs.curves[i] for i in kept},
            compute=self.runs.compute[kept],
            criterion=self.criterion,
            delta=self.delta,
            n_boot=0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": "y = E + A * x^(-alpha)",
            **{name: getattr(self, name).to_dict() for name in NAMES},
            "objective": self.objective,
            "rms_log_residual": self.rms_log_residual,
            "criterion": self.criterion,
            "delta": self.delta,
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "bootstrap": None if self.bootstrap is None else self.bootstrap.to_dict(),
            "frontier": None if self.frontier is None else self.frontier.to_dict(),
        }


def power_law(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    """E + A·x^(−α), its power term formed in log space."""
    return e + objective.power_term(x, a, alpha)


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    groups: Sequence[Hashable] | None = None,
    criterion: objective.Criterion = "huber",
    delta: float = objective.DELTA,
    n_starts: int | None = N_STARTS,
    n_boot: int = N_BOOT,
    seed: int | None = 0,
    level: float = LEVEL,
) -> PowerLawFit:
    """Fit y = E + A·x^(−α) to positive (x, y); intervals from `n_boot` refits on resamples
    of the points (points sharing a `groups` label drawn together)."""
    x, y = _points(x, y)
    params, value, rms, starts, log_ref = _fit_with_starts(x, y, criterion, delta, n_starts)

    def refit(indices: np.ndarray) -> np.ndarray:
        return _fit(x[indices], y[indices], criterion, delta, starts, log_ref)[0]

    boot = _bootstrap(refit, group_indices(groups, len(x)), n_boot, seed, level)
    return _result(params, value, rms, x, y, criterion, delta, boot)


def fit_frontier_law(
    curves: Curves,
    *,
    compute: Sequence[float] | np.ndarray | None = None,
    groups: Sequence[Hashable] | None = None,
    resample: Literal["runs", "points"] = "runs",
    criterion: objective.Criterion = "huber",
    delta: float = objective.DELTA,
    n_starts: int | None = N_STARTS,
    n_boot: int = N_BOOT,
    seed: int | None = 0,
    level: float = LEVEL,
) -> PowerLawFit:
    """Fit L(C) = E + A·C^(−α) to the corners of the compute-efficient frontier of `curves`
    (see `compute_frontier`); `compute` is each run's total compute (the held-out check's
    order; default: the largest compute of its curve).

    resample="runs" (default) bootstraps the runs (runs sharing a `groups` label, one per
    run, drawn together) and refits the frontier of each resample. A run drawn twice adds
    nothing to an envelope, so a resample's frontier is that of about 63% of the distinct
    runs: the intervals include how much the frontier depends on which runs were trained,
    and lean towards higher losses. resample="points" bootstraps the frontier's corners."""
    if resample not in ("runs", "points"):
        raise ConfigError(f"expected resample 'runs' or 'points', got {resample!r}")
    keys, arrays = curve_arrays(curves)
    totals = _run_totals(arrays, compute)
    frontier = _frontier(keys, arrays)
    x, y = _points(frontier.compute, frontier.loss)
    params, value, rms, starts, log_ref = _fit_with_starts(x, y, criterion, delta, n_starts)

    def refit_runs(indices: np.ndarray) -> np.ndarray:
        drawn = _frontier([keys[i] for i in indices], [arrays[i] for i in indices])
        return _fit(drawn.compute, drawn.loss, criterion, delta, starts, log_ref)[0]

    def refit_points(indices: np.ndarray) -> np.ndarray:
        return _fit(x[indices], y[indices], criterion, delta, starts, log_ref)[0]

    if resample == "runs":
        boot = _bootstrap(refit_runs, group_indices(groups, len(keys)), n_boot, seed, level)
    else:
        boot = _bootstrap(refit_points, group_indices(None, len(x)), n_boot, seed, level)
    runs = FrontierRuns(tuple(keys), tuple(arrays), totals)
    return _result(params, value, rms, x, y, criterion, delta, boot, frontier, runs)


def _run_totals(arrays: list[np.ndarray], compute: Any) -> np.ndarray:
    if compute is None:
        return np.array([a[:, 0].max() if len(a) else 0.0 for a in arrays], dtype=float)
    totals = np.asarray(compute, dtype=float)
    if totals.shape != (len(arrays),):
        raise ShapeError(f"expected one total compute per run ({len(arrays)}), got {totals.shape}")
    return totals


def _points(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ShapeError(f"expected x and y of one equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x) & (x > 0)) and np.all(np.isfinite(y) & (y > 0))):
        raise DataError("expected positive finite x and y")
    if len(np.unique(x)) < 3:
        raise DataError(f"expected at least 3 distinct x to fit 3 parameters, got {x.tolist()}")
    return x, y


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    criterion: objective.Criterion,
    delta: float,
    starts: np.ndarray,
    log_ref: float,
) -> tuple[np.ndarray, float, float]:
    """(E, A, α) fitted from `starts` θ = (e, a, α) of x / x_ref (log x_ref = `log_ref`), the
    objective and the RMS log residual."""
    if len(np.unique(x)) < 3:
        raise RefitFailed("fewer than 3 distinct x")
    z, log_y = (np.log(x) - log_ref)[:, None], np.log(y)
    theta, value, rms = objective.fit_log(z, log_y, starts, criterion, delta)
    e, a, alpha = theta
    return np.array([np.exp(e), np.exp(a + alpha * log_ref), alpha]), value, rms


def _fit_with_starts(
    x: np.ndarray,
    y: np.ndarray,
    criterion: objective.Criterion,
    delta: float,
    n_starts: int | None,
) -> tuple[np.ndarray, float, float, np.ndarray, float]:
    """The full-data fit from the best `n_starts` of the grid: (E, A, α), objective, RMS log
    residual, the starts bootstrap refits use, log x_ref."""
    log_ref = float(np.mean(np.log(x)))
    log_y = np.log(y)
    grid = (
        np.array(
            np.meshgrid(
                np.log(np.min(y) * np.array(_E_FRACTIONS)),
                np.mean(log_y) + np.log(_A_FRACTIONS),
                _ALPHAS,
                indexing="ij",
            )
        )
        .reshape(3, -1)
        .T
    )
    z = (np.log(x) - log_ref)[:, None]
    starts = objective.best_starts(z, log_y, grid, criterion, delta, n_starts)
    params, value, rms = _fit(x, y, criterion, delta, starts, log_ref)
    e, a, alpha = params
    optimum = [np.log(max(e, 1e-300)), np.log(a) - alpha * log_ref, alpha]
    return params, value, rms, np.vstack([optimum, starts[: BOOT_STARTS - 1]]), log_ref


def _bootstrap(
    refit: Callable[[np.ndarray], np.ndarray],
    groups: list[np.ndarray],
    n_boot: int,
    seed: int | None,
    level: float,
) -> Bootstrap | None:
    return run_bootstrap(refit, groups, NAMES, n_boot, seed, level) if n_boot > 0 else None


def _result(
    params: np.ndarray,
    value: float,
    rms: float,
    x: np.ndarray,
    y: np.ndarray,
    criterion: objective.Criterion,
    delta: float,
    boot: Bootstrap | None,
    frontier: Frontier | None = None,
    runs: FrontierRuns | None = None,
) -> PowerLawFit:
    def est(i: int) -> Estimate:
        samples = None if boot is None else boot.samples[:, i]
        return estimate(params[i], samples, LEVEL if boot is None else boot.level)

    return PowerLawFit(
        est(0), est(1), est(2), value, rms, x, y, criterion, delta, boot, frontier, runs
    )
