"""The compute-efficient frontier of a set of training runs (Kaplan et al. 2020).

Each run gives its validation curve as points (C, L) along training (C: training compute so
far, L: validation loss). Over all runs' points, the envelope

    F(c) = min { L : (C, L) a point of any run, C ≤ c }

is a non-increasing step function of c. `compute_frontier` returns its corners: the points
(C, L) whose loss is strictly below every loss reached at a smaller compute and is the least
loss at its own compute. These are exactly the points where F drops (F(C) = L there, and F is
constant until the next corner). Ties: of several points with the same least loss at one
compute, the first (in the order of the runs, then of the curve) is kept; a later point that
only equals the current minimum is not a corner. Points with a non-finite loss (a diverged
run) are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqlab.errors import DataError, ShapeError

Curves = Mapping[Hashable, Any] | Sequence[Any]


@dataclass(frozen=True)
class Frontier:
    """The corners of the envelope, by increasing compute (and so strictly decreasing loss);
    `run[i]` is the key (or index) of the run that reached corner i; `dropped` counts the
    points with a non-finite loss."""

    compute: np.ndarray
    loss: np.ndarray
    run: tuple[Hashable, ...]
    dropped: int = 0

    def envelope(self, c: np.ndarray | float) -> np.ndarray:
        """F(c); +inf below the first corner's compute."""
        index = np.searchsorted(self.compute, np.asarray(c, dtype=float), side="right") - 1
        return np.where(index >= 0, self.loss[np.maximum(index, 0)], np.inf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute": self.compute.tolist(),
            "loss": self.loss.tolist(),
            "run": [str(r) for r in self.run],
            "dropped": self.dropped,
        }


def curve_arrays(curves: Curves) -> tuple[list[Hashable], list[np.ndarray]]:
    """The run keys (indices for a sequence) and each curve as an array (k, 2) of (C, L);
    raises on a wrong shape or a non-positive or non-finite compute."""
    items = list(curves.items()) if isinstance(curves, Mapping) else list(enumerate(curves))
    keys, arrays = [], []
    for key, curve in items:
        array = np.asarray(curve, dtype=float)
        if array.size == 0:
            array = array.reshape(0, 2)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ShapeError(f"expected run {key!r} as (compute, loss) pairs, got {array.shape}")
        if not np.all(np.isfinite(array[:, 0]) & (array[:, 0] > 0)):
            raise DataError(f"expected positive finite compute in run {key!r}")
        keys.append(key)
        arrays.append(array)
    return keys, arrays


def compute_frontier(curves: Curves) -> Frontier:
    """The corners of the lower envelope of `curves`: a mapping run → points or a sequence of
    runs, each run a sequence of (compute, loss) pairs along training (see the module
    docstring)."""
    keys, arrays = curve_arrays(curves)
    return _frontier(keys, arrays)


def _frontier(keys: Sequence[Hashable], arrays: Sequence[np.ndarray]) -> Frontier:
    runs = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)] + [np.empty(0)])
    points = np.concatenate(list(arrays) + [np.empty((0, 2))])
    finite = np.isfinite(points[:, 1])
    dropped = int((~finite).sum())
    points, runs = points[finite], runs[finite].astype(int)
    if len(points) == 0:
        raise DataError("expected at least one point with a finite loss")
    order = np.lexsort((points[:, 1], points[:, 0]))  # by compute, then loss; stable
    compute, loss, runs = points[order, 0], points[order, 1], runs[order]
    corners, best = [], np.inf
    for i in range(len(compute)):
        if loss[i] < best:  # the first point at a compute holds its least loss
            corners.append(i)
            best = loss[i]
    idx = np.array(corners)
    return Frontier(compute[idx], loss[idx], tuple(keys[r] for r in runs[idx]), dropped)
