"""Whether a ranking over seeds orders anything: the Student-t interval of a row's mean, and
Welch's t-test between adjacent rows.

A row's metric at seeds s = 1..n (values x_s, mean x̄, sample std s_x):

    95% interval of the mean:  x̄ ± t_{0.975, n-1} · s_x / √n

Two rows a (better) and b (the next one), runs at the same seed unpaired (a seed indexes a data
order and an initialisation, not a shared condition), Welch's test:

    Δ = sign · (x̄_a - x̄_b)            (≥ 0 in rank order; sign = +1 when higher is better)
    se = √(s_a²/n_a + s_b²/n_b),  ν = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))
    95% interval of Δ: Δ ± t_{0.975, ν} · se,  p two-sided (scipy.stats.ttest_ind, equal_var=False)

The rows are *separated* when p < 0.05 (the interval of Δ excludes 0). When the two rows hold
the same seeds, a paired test (scipy.stats.ttest_rel) is reported beside it; the verdict
stays Welch's.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import NamedTuple

from scipy import stats

CONFIDENCE = 0.95


def mean_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """The Student-t interval (n - 1 degrees of freedom) of the mean of `values`; None for
    fewer than two values or a non-finite one."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * standard_error(values)
    return mean - half, mean + half


class Separation(NamedTuple):
    """The test of a row against the next-ranked one (see the module docstring)."""

    delta: float  # how much better the higher-ranked row's mean is (≥ 0 in rank order)
    low: float  # Welch interval of delta (NaN when both rows have zero variance)
    high: float
    p: float  # Welch's two-sided p-value (NaN when both rows have zero variance)
    paired_p: float | None  # paired t-test at the same seeds, when both rows share them
    separated: bool


def separation(
    better: Sequence[float],
    worse: Sequence[float],
    higher_is_better: bool,
    seeds: tuple[Sequence[int], Sequence[int]] | None = None,
    confidence: float = CONFIDENCE,
) -> Separation | None:
    """Welch's test of `better` (per-seed values of the higher-ranked row) against `worse`;
    None when a row has fewer than two values or a non-finite one. `seeds`, the seeds of
    both rows in the order of their values, adds a paired test when they are the same set.
    Two rows of zero variance are not tested (NaN interval and p, not separated)."""
    if mean_interval(better) is None or mean_interval(worse) is None:
        return None
    sign = 1.0 if higher_is_better else -1.0
    delta = sign * (statistics.fmean(better) - statistics.fmean(worse)) + 0.0  # no -0.0
    if _constant(better) and _constant(worse):
        return Separation(delta, math.nan, math.nan, math.nan, None, False)
    with warnings.catch_warnings():  # a row of zero variance: "precision loss", harmless
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(better, worse, equal_var=False)
    a, b = statistics.variance(better) / len(better), statistics.variance(worse) / len(worse)
    dof = (a + b) ** 2 / (a**2 / (len(better) - 1) + b**2 / (len(worse) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(a + b)
    p = float(test.pvalue)
    return Separation(
        delta, delta - half, delta + half, p, _paired_p(better, worse, seeds), p < 1 - confidence
    )


def separation_lines(
    rows: Sequence[tuple[str | None, Sequence[float], Sequence[int] | None]],
    higher_is_better: bool,
    confidence: float = CONFIDENCE,
) -> list[str]:
    """One line per adjacent pair of `rows` (label or None, per-seed values, their seeds or
    None), in rank order: `rank 2 vs 3: Δ = 0.0700 (Welch 95% CI [0.0300, 0.1100],
    p = 0.004): separated`."""
    lines = []
    level = f"{confidence:.0%}"
    for i in range(len(rows) - 1):
        (label_a, a, seeds_a), (label_b, b, seeds_b) = rows[i], rows[i + 1]
        head = f"rank {_name(i + 1, label_a)} vs {_name(i + 2, label_b)}"
        both = (seeds_a, seeds_b) if seeds_a is not None and seeds_b is not None else None
        test = separation(a, b, higher_is_better, both, confidence)
        if test is None:
            why = "one seed" if min(len(a), len(b)) < 2 else "a non-finite value"
            lines.append(f"{head}: {why}: no interval")
            continue
        delta = f"Δ = {test.delta:.4f}"
        if math.isnan(test.p):
            verdict = "tied" if test.delta == 0 else "every seed gives the same Δ"
            lines.append(f"{head}: {delta}: zero variance on both sides, no test: {verdict}")
            continue
        paired = "" if test.paired_p is None else f"; paired {_p(test.paired_p)}"
        verdict = "separated" if test.separated else f"not separated at {level}"
        lines.append(
            f"{head}: {delta} (Welch {level} CI [{test.low:.4f}, {test.high:.4f}], "
            f"{_p(test.p)}{paired}): {verdict}"
        )
    return lines


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of `values` (sample std / √n, n ≥ 2)."""
    return statistics.stdev(values) / math.sqrt(len(values))


def _constant(values: Sequence[float]) -> bool:
    return max(values) == min(values)


def _paired_p(
    better: Sequence[float],
    worse: Sequence[float],
    seeds: tuple[Sequence[int], Sequence[int]] | None,
) -> float | None:
    """The paired t-test's p-value at shared seeds; None unless both rows have the same seeds
    and their differences vary."""
    if seeds is None or sorted(seeds[0]) != sorted(seeds[1]) or len(set(seeds[0])) < 2:
        return None
    by_seed = dict(zip(seeds[1], worse, strict=True))
    pairs = [(x, by_seed[s]) for s, x in zip(seeds[0], better, strict=True)]
    if _constant([x - y for x, y in pairs]):
        return None
    return float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)


def _name(rank: int, label: str | None) -> str:
    return str(rank) if label is None else f"{rank} ({label})"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
