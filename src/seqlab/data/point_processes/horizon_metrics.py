"""Long-horizon forecasting metrics of HoTPP (Karpukhin, Shipilov and Savchenko 2024, "HoTPP
Benchmark: Are We Good at the Long Horizon Events Forecasting?"): OTD and T-mAP.

**OTD** (optimal transport distance; Mei, Qin and Eisner 2019) between a predicted sequence
(s_p, c_p) and a true one (t_q, k_q): the cheapest edit, where a predicted event may be matched
to a true event of the same mark at cost |s_p - t_q|, and every unmatched prediction costs
`delete_cost` and every unmatched true event `insert_cost`:

    OTD = min over partial matchings M of  Σ_{(p,q)∈M} |s_p - t_q|
                                            + delete_cost·(P - |M|) + insert_cost·(Q - |M|).

It is solved exactly by one rectangular assignment (scipy's linear_sum_assignment) over
c_pq = min(|s_p - t_q|, D) for equal marks and D otherwise, D = delete_cost + insert_cost:
a pair of cost D is as cheap as leaving both ends unmatched, so a full assignment of
min(P, Q) pairs plus the leftover edits equals the minimum above. `mean_otd` averages it over
prediction points; with `steps` it compares only the first `steps` events of each side, as
HoTPP does (its OTD is over a fixed number of next events).

**T-mAP** (temporal mean average precision). A prediction point j has a start time t⁰_j,
predicted events (s, score vector [K], e.g. mark probabilities) and the true events after
t⁰_j. Only events with s - t⁰_j < H (the horizon) take part, on both sides. For each mark c and
time tolerance δ, the predictions are matched one-to-one to the true events of mark c with
|s - t| <= δ: the matching with the most pairs and, among those, the largest total score
score[:, c]. Over all prediction points, the predictions ranked by score[:, c] (ties are one
threshold) give precision P_r and recall R_r = TP_r / (number of true mark-c events) at each
threshold r, so recall stops below 1 when true events are never matched, and

    AP_c(δ) = Σ_r (R_r - R_{r-1}) · P_r,      T-mAP = mean_δ mean_c AP_c(δ),

the inner mean over the marks with at least one true event within the horizons. Differences
from the HoTPP code: HoTPP divides by all K marks (a mark that never occurs scores 0) and breaks
score ties by sort order; its assignment uses a finite "infinite" cost, ours keeps the
most-pairs-first order exactly. HoTPP reports T-mAP with the scores being label log-probs
(any increasing transform gives the same AP but can change the matching only among
equal-size matchings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from seqlab.data.point_processes.base import positive
from seqlab.errors import ConfigError, DataError


def otd(
    predicted_times: np.ndarray,
    predicted_marks: np.ndarray,
    true_times: np.ndarray,
    true_marks: np.ndarray,
    *,
    insert_cost: float,
    delete_cost: float,
) -> float:
    """The optimal transport distance between one predicted and one true sequence."""
    s, c = _events(predicted_times, predicted_marks, "predicted")
    t, k = _events(true_times, true_marks, "true")
    insert = float(positive("otd insert_cost", insert_cost, strict=False))
    delete = float(positive("otd delete_cost", delete_cost, strict=False))
    both = insert + delete
    if s.size == 0 or t.size == 0:
        return delete * s.size + insert * t.size
    cost = np.minimum(np.abs(s[:, None] - t[None, :]), both)
    cost[c[:, None] != k[None, :]] = both
    rows, cols = linear_sum_assignment(cost)
    pairs = rows.size
    return float(cost[rows, cols].sum() + delete * (s.size - pairs) + insert * (t.size - pairs))


def mean_otd(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    insert_cost: float,
    delete_cost: float,
    steps: int | None = None,
) -> float:
    """Mean OTD over prediction points: `predictions[j]` and `targets[j]` are the (times,
    marks) predicted and observed after point j; `steps` keeps the first `steps` of each."""
    if len(predictions) != len(targets) or not predictions:
        raise DataError(
            f"expected as many targets as predictions (>= 1), got {len(targets)} and "
            f"{len(predictions)}"
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"expected otd steps an integer >= 1 or None, got {steps!r}")
    cut = slice(None, steps)
    return float(
        np.mean(
            [
                otd(
                    np.asarray(ps)[cut],
                    np.asarray(pc)[cut],
                    np.asarray(ts)[cut],
                    np.asarray(tc)[cut],
                    insert_cost=insert_cost,
                    delete_cost=delete_cost,
                )
                for (ps, pc), (ts, tc) in zip(predictions, targets, strict=True)
            ]
        )
    )


def match_within(
    predicted_times: np.ndarray, scores: np.ndarray, true_times: np.ndarray, delta: float
) -> np.ndarray:
    """Which predictions [P] (bool) a one-to-one matching to the true events [Q] pairs, among
    pairs with |s_p - t_q| <= delta: the most pairs, then the largest Σ scores[p]."""
    s = np.asarray(predicted_times, dtype=np.float64)
    t = np.asarray(true_times, dtype=np.float64)
    w = np.asarray(scores, dtype=np.float64)
    matched = np.zeros(s.size, dtype=bool)
    allowed = np.abs(s[:, None] - t[None, :]) <= delta
    if not allowed.any():
        return matched
    # A forbidden pair must cost more than any difference in total score between matchings.
    spread = w.max() - w.min() if w.size else 0.0
    forbidden = (spread + 1.0) * (min(s.size, t.size) + 1)
    cost = np.where(allowed, w.max() - w[:, None], forbidden)
    rows, cols = linear_sum_assignment(cost)
    matched[rows[allowed[rows, cols]]] = True
    return matched


def average_precision(scores: np.ndarray, hits: np.ndarray, num_targets: int) -> float:
    """Σ_r (R_r - R_{r-1}) P_r over the distinct score thresholds r (descending), with recall
    R_r = TP_r / num_targets; 0 when num_targets is 0 or nothing is positive."""
    scores = np.asarray(scores, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    if num_targets <= 0 or not hits.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    last = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(hits)[last]
    ranked = np.arange(1, scores.size + 1)[last]
    recall = tp / num_targets
    precision = tp / ranked
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def t_map(
    starts: Sequence[float] | np.ndarray,
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    horizon: float,
    deltas: Sequence[float],
) -> float:
    """T-mAP over prediction points j: `starts[j]` = t⁰_j, `predictions[j]` = (times [P],
    scores [P, K]) and `targets[j]` = (times [Q], marks [Q]) of the true events after t⁰_j;
    `horizon` H and the time tolerances `deltas` (averaged) as in the module docstring."""
    if not len(starts) == len(predictions) == len(targets) or not len(starts):
        raise DataError(
            f"expected as many starts, predictions and targets (>= 1), got {len(starts)}, "
            f"{len(predictions)} and {len(targets)}"
        )
    h = float(positive("t-map horizon", horizon))
    tolerances = positive("t-map deltas", list(deltas), strict=False)
    if tolerances.ndim != 1 or tolerances.size == 0:
        raise ConfigError(f"expected t-map deltas a non-empty list, got {list(deltas)}")
    num_marks = None
    points = []
    for start, (ps, pw), (ts, tc) in zip(starts, predictions, targets, strict=True):
        w = np.asarray(pw, dtype=np.float64)
        s = np.asarray(ps, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != s.size or s.ndim != 1:
            raise DataError(
                f"expected prediction times [P] and scores [P, K], got {s.shape}, {w.shape}"
            )
        if not np.all(np.isfinite(w)):
            raise DataError("expected finite prediction scores")
        num_marks = w.shape[1] if num_marks is None else num_marks
        if w.shape[1] != num_marks:
            raise DataError(f"expected scores with {num_marks} marks, got {w.shape[1]}")
        t, k = _events(ts, tc, "true")
        if k.size and k.max() >= num_marks:
            raise DataError(f"expected true marks < {num_marks}, got {k.max()}")
        keep_p, keep_t = s - start < h, t - start < h
        points.append((s[keep_p], w[keep_p], t[keep_t], k[keep_t]))
    counts = np.bincount(np.concatenate([p[3] for p in points]), minlength=num_marks)
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise DataError("t-map needs at least one true event within the horizon")
    scores = np.concatenate([p[1] for p in points])
    aps = []
    for delta in tolerances:
        for c in present:
            hits = np.concatenate(
                [match_within(s, w[:, c], t[k == c], delta) for s, w, t, k in points]
            )
            aps.append(average_precision(scores[:, c], hits, int(counts[c])))
    return float(np.mean(aps))


def _events(times: np.ndarray, marks: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=np.float64)
    m = np.asarray(marks)
    if t.ndim != 1 or m.shape != t.shape or (m.size and not np.issubdtype(m.dtype, np.integer)):
        raise DataError(
            f"expected {side} times [n] and integer marks [n], got {t.shape}, {m.shape} {m.dtype}"
        )
    if m.size and m.min() < 0:
        raise DataError(f"expected {side} marks >= 0, got {m.min()}")
    return t, m.astype(np.int64)
