"""Where two fitted loss-against-compute curves cross.

For fits a and b with L_a(C), L_b(C) (`loss_at_compute`: the L(C) power law, or a Chinchilla
fit's compute-optimal loss), the crossings are the roots of

    g(u) = log L_a(e^u) − log L_b(e^u),   u = log C ∈ [log c_min, log(extrapolate · c_max)]

(extrapolate = 100 by default: two decades past the largest run). g is evaluated on a grid
of `grid` points evenly spaced in u; every sign change between neighbours is refined with
scipy.optimize.brentq and a grid point where g is exactly 0 is a root. A touch without a
sign change, or two crossings closer than one grid step, is not found.

When both fits carry bootstrap samples, refit i of a is paired with refit i of b and the
crossings of each pair are found the same way. A single crossing of the point estimates gets
the percentile interval over *every* pair: a pair that crosses gives its crossing (the one
nearest the point estimate's, in log C, when it crosses several times); a pair that does not
cross gives "beyond the searched range", above it when the fit lower at c_min is the same as
for the point estimates (the crossing has not come yet), below it otherwise. A bound that
falls beyond the range is open: its `ci` end is +inf (or 0 below), summarised as "> c_high"
("< c_min"). `bootstrap_pairs` and `pairs_crossing` say how many pairs there were and how
many crossed within the range (with several crossings no interval is given).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import brentq

from seqlab.errors import ConfigError
from seqlab.scaling.bootstrap import Bootstrap
from seqlab.scaling.estimate import LEVEL, Estimate, Interval

EXTRAPOLATE = 100.0
GRID = 512


class ComputeCurve(Protocol):
    bootstrap: Bootstrap | None

    def loss_at_compute(self, c: Any, params: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Crossing:
    """One crossing: its compute (with an interval when the module docstring allows one) and
    which fit is lower just above it."""

    compute: Estimate
    lower_above: str

    def to_dict(self) -> dict[str, Any]:
        return {"compute": self.compute.to_dict(), "lower_above": self.lower_above}


@dataclass(frozen=True)
class Crossover:
    """The crossings of two curves in [c_low, c_high] (none: `crossings` is empty), which fit
    is lower at c_low, and how the bootstrap pairs behaved."""

    names: tuple[str, str]
    c_low: float
    c_high: float
    crossings: tuple[Crossing, ...]
    lower_at_start: str
    bootstrap_pairs: int = 0
    pairs_crossing: int = 0

    def summary(self) -> str:
        span = f"[{self.c_low:.3g}, {self.c_high:.3g}]"
        crossed = (
            f" ({self.pairs_crossing} of {self.bootstrap_pairs} bootstrap pairs cross)"
            if self.bootstrap_pairs
            else ""
        )
        if not self.crossings:
            return f"no crossover within {span}: {self.lower_at_start} is lower throughout{crossed}"
        parts = []
        for crossing in self.crossings:
            ci = crossing.compute.ci
            interval = (
                "" if ci is None else f" (95% CI [{self._bound(ci.low)}, {self._bound(ci.high)}])"
            )
            parts.append(
                f"C = {crossing.compute.value:.3g}{interval}, {crossing.lower_above} lower above"
            )
        return f"crossover within {span}: " + "; ".join(parts) + crossed

    def _bound(self, value: float) -> str:
        if value > self.c_high:
            return f"> {self.c_high:.3g}"
        if value < self.c_low:
            return f"< {self.c_low:.3g}"
        return f"{value:.3g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "c_low": self.c_low,
            "c_high": self.c_high,
            "crossings": [c.to_dict() for c in self.crossings],
            "lower_at_start": self.lower_at_start,
            "bootstrap_pairs": self.bootstrap_pairs,
            "pairs_crossing": self.pairs_crossing,
            "summary": self.summary(),
        }


def crossover(
    fit_a: ComputeCurve,
    fit_b: ComputeCurve,
    c_min: float,
    c_max: float,
    *,
    extrapolate: float = EXTRAPOLATE,
    names: tuple[str, str] = ("a", "b"),
    grid: int = GRID,
) -> Crossover:
    """The computes in [c_min, extrapolate·c_max] where L_a(C) = L_b(C) (see the module
    docstring)."""
    if not (0 < c_min < c_max and extrapolate >= 1 and grid >= 2):
        raise ConfigError(
            f"expected 0 < c_min < c_max, extrapolate >= 1 and grid >= 2, got c_min={c_min}, "
            f"c_max={c_max}, extrapolate={extrapolate}, grid={grid}"
        )
    lo, hi = float(np.log(c_min)), float(np.log(c_max * extrapolate))
    u = np.linspace(lo, hi, grid)

    def gap(params_a: np.ndarray | None, params_b: np.ndarray | None) -> Callable:
        def g(v: Any) -> Any:
            c = np.exp(v)
            return np.log(fit_a.loss_at_compute(c, params_a)) - np.log(
                fit_b.loss_at_compute(c, params_b)
            )

        return g

    g = gap(None, None)
    roots = _roots(g, u)
    start = float(g(lo))
    pairs, crossed, samples = 0, 0, []
    boot_a, boot_b = fit_a.bootstrap, fit_b.bootstrap
    if boot_a is not None and boot_b is not None:
        pairs = min(boot_a.n_ok, boot_b.n_ok)
        for i in range(pairs):
            g_i = gap(boot_a.samples[i], boot_b.samples[i])
            found = _roots(g_i, u)
            crossed += bool(found)
            if len(roots) == 1:
                samples.append(_pair_sample(found, roots[0], float(g_i(lo)), start, lo, hi))
    level = boot_a.level if boot_a is not None else LEVEL
    crossings = []
    for root in roots:
        above = g(min(root + (u[1] - u[0]) / 2, hi))
        lower_above = names[0] if above < 0 else names[1]
        ci = _open_interval(np.array(samples), lo, hi, level) if samples else None
        crossings.append(Crossing(Estimate(float(np.exp(root)), ci), lower_above))
    lower_at_start = names[0] if start < 0 else names[1] if start > 0 else "neither"
    return Crossover(
        names,
        float(c_min),
        float(c_max * extrapolate),
        tuple(crossings),
        lower_at_start,
        pairs,
        crossed,
    )


def _pair_sample(
    found: list[float], root: float, start: float, start_point: float, lo: float, hi: float
) -> float:
    """One pair's crossing in u: the nearest to `root`, or for a pair that does not cross a
    value beyond the range (above when its ordering at c_min is that of the point
    estimates)."""
    if found:
        return min(found, key=lambda v: abs(v - root))
    return hi + 1.0 if np.sign(start) == np.sign(start_point) else lo - 1.0


def _open_interval(samples: np.ndarray, lo: float, hi: float, level: float) -> Interval:
    """The percentile interval of pair crossings u (values beyond [lo, hi] stand for "beyond
    the range"), as compute; an end beyond the range is open: +inf above, 0 below."""
    q = (1 - level) / 2
    low, high = np.quantile(samples, [q, 1 - q])

    def bound(v: float) -> float:
        return math.inf if v > hi else 0.0 if v < lo else math.exp(v)

    return Interval(bound(low), bound(high))


def _roots(g: Callable, u: np.ndarray) -> list[float]:
    """The roots of g between sign changes on the grid u, and grid points where g = 0."""
    with np.errstate(all="ignore"):
        values = np.asarray(g(u), dtype=float)
    roots = []
    for i in range(len(u)):
        if values[i] == 0:
            roots.append(float(u[i]))
        elif i + 1 < len(u) and values[i] * values[i + 1] < 0:
            roots.append(float(brentq(lambda v: float(g(v)), u[i], u[i + 1], xtol=1e-12)))
    return roots
