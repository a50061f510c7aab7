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
the percentile interval of the pairs that cross exactly once; `bootstrap_pairs` and
`pairs_crossing_once` say how many those are (with several crossings no interval is given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import brentq

from seqlab.errors import ConfigError
from seqlab.scaling.bootstrap import Bootstrap
from seqlab.scaling.estimate import LEVEL, Estimate, estimate

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
    pairs_crossing_once: int = 0

    def summary(self) -> str:
        span = f"[{self.c_low:.3g}, {self.c_high:.3g}]"
        if not self.crossings:
            return f"no crossover within {span}: {self.lower_at_start} is lower throughout"
        parts = []
        for crossing in self.crossings:
            ci = crossing.compute.ci
            interval = "" if ci is None else f" (95% CI [{ci.low:.3g}, {ci.high:.3g}])"
            parts.append(
                f"C = {crossing.compute.value:.3g}{interval}, {crossing.lower_above} lower above"
            )
        return f"crossover within {span}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "c_low": self.c_low,
            "c_high": self.c_high,
            "crossings": [c.to_dict() for c in self.crossings],
            "lower_at_start": self.lower_at_start,
            "bootstrap_pairs": self.bootstrap_pairs,
            "pairs_crossing_once": self.pairs_crossing_once,
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
    pairs, once, samples = 0, 0, []
    boot_a, boot_b = fit_a.bootstrap, fit_b.bootstrap
    if boot_a is not None and boot_b is not None:
        pairs = min(boot_a.n_ok, boot_b.n_ok)
        for i in range(pairs):
            found = _roots(gap(boot_a.samples[i], boot_b.samples[i]), u)
            if len(found) == 1:
                once += 1
                samples.append(found[0])
    level = boot_a.level if boot_a is not None else LEVEL
    boot_samples = np.exp(np.array(samples)) if len(roots) == 1 and pairs else None
    crossings = []
    for root in roots:
        above = g(min(root + (u[1] - u[0]) / 2, hi))
        lower_above = names[0] if above < 0 else names[1]
        crossings.append(Crossing(estimate(np.exp(root), boot_samples, level), lower_above))
    start = g(lo)
    lower_at_start = names[0] if start < 0 else names[1] if start > 0 else "neither"
    return Crossover(
        names,
        float(c_min),
        float(c_max * extrapolate),
        tuple(crossings),
        lower_at_start,
        pairs,
        once,
    )


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
