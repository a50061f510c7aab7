"""The bootstrap behind every interval of `seqlab.scaling`: refit on resampled runs.

The unit of resampling is a *group*: by default every point (run) is its own group; points
that share a group label (e.g. the seeds of one configuration) are drawn together. One
resample draws as many groups as there are, uniformly with replacement, from a seeded
`numpy.random.Generator`, and refits on the union of their points. A refit that raises (a
SeqlabError such as `objective.RefitFailed`, or an arithmetic error) or returns a non-finite
parameter is a *failure*: it is counted, its reason kept, and it adds no sample (the
intervals come from the refits that succeeded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqlab.errors import SeqlabError, ShapeError
from seqlab.scaling.estimate import LEVEL

N_BOOT = 200


@dataclass(frozen=True)
class Bootstrap:
    """The refits of one fit: `samples[i, j]` is parameter `names[j]` in refit i (successful
    refits only), `failures` one reason per failed refit."""

    names: tuple[str, ...]
    samples: np.ndarray
    n_boot: int
    failures: tuple[str, ...]
    seed: int | None
    level: float = LEVEL

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_ok(self) -> int:
        return int(self.samples.shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, self.names.index(name)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_boot": self.n_boot,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "failures": dict(Counter(self.failures)),
            "seed": self.seed,
            "level": self.level,
        }


def group_indices(groups: Sequence[Hashable] | None, n: int) -> list[np.ndarray]:
    """The point indices of each group, groups in order of first appearance; every point its
    own group when `groups` is None."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    if len(groups) != n:
        raise ShapeError(f"expected one group label per point ({n}), got {len(groups)}")
    members: dict[Hashable, list[int]] = {}
    for i, label in enumerate(groups):
        members.setdefault(label, []).append(i)
    return [np.array(idx) for idx in members.values()]


def run_bootstrap(
    refit: Callable[[np.ndarray], np.ndarray],
    groups: list[np.ndarray],
    names: tuple[str, ...],
    n_boot: int = N_BOOT,
    seed: int | None = 0,
    level: float = LEVEL,
) -> Bootstrap:
    """`n_boot` refits, each `refit(indices)` on the points of a resample of `groups` (indices
    repeat when a group is drawn twice); it returns the parameters in the order of `names`."""
    rng = np.random.default_rng(seed)
    samples, failures = [], []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(groups), size=len(groups))
        indices = np.concatenate([groups[g] for g in drawn])
        try:
            theta = np.asarray(refit(indices), dtype=float)
        except (SeqlabError, ArithmeticError, ValueError) as error:
            failures.append(f"{type(error).__name__}: {error}")
            continue
        if not np.all(np.isfinite(theta)):
            failures.append("non-finite parameters")
            continue
        samples.append(theta)
    array = np.array(samples, dtype=float).reshape(len(samples), len(names))
    return Bootstrap(names, array, n_boot, tuple(failures), seed, level)
