"""OTD and T-mAP on hand-computed examples and against brute force over all matchings."""

from __future__ import annotations

import numpy as np
import pytest

from seqlab.data.point_processes import average_precision, match_within, mean_otd, otd, t_map

COSTS = {"insert_cost": 1.0, "delete_cost": 0.7}


def matchings(allowed: np.ndarray):
    """Every one-to-one partial matching [(p, q), ..] over the allowed pairs."""

    def grow(p: int, used: frozenset):
        if p == allowed.shape[0]:
            yield []
            return
        yield from grow(p + 1, used)
        for q in range(allowed.shape[1]):
            if allowed[p, q] and q not in used:
                for rest in grow(p + 1, used | {q}):
                    yield [(p, q), *rest]

    yield from grow(0, frozenset())


def brute_otd(s, c, t, k, insert_cost, delete_cost):
    return min(
        sum(abs(s[p] - t[q]) for p, q in pairs)
        + delete_cost * (len(s) - len(pairs))
        + insert_cost * (len(t) - len(pairs))
        for pairs in matchings(c[:, None] == k[None, :])
    )


def test_otd_by_hand():
    s, c = np.array([1.0, 2.0]), np.array([0, 1])
    assert otd(s, c, s, c, **COSTS) == 0.0
    assert otd(s, c, np.array([1.0, 2.3]), c, **COSTS) == pytest.approx(0.3)
    assert otd(s, c, np.array([1.0, 4.5]), c, **COSTS) == pytest.approx(1.7)  # delete + insert
    assert otd(s[:1], c[:1], s, c, **COSTS) == pytest.approx(1.0)  # a missing event
    assert otd(s, c, s[:1], c[:1], **COSTS) == pytest.approx(0.7)  # an extra prediction
    assert otd(s, np.array([0, 0]), s, c, **COSTS) == pytest.approx(1.7)  # a wrong mark
    assert otd(s[:0], c[:0], s[:0], c[:0], **COSTS) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_otd_brute_force(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.integers(0, 5, 2)
    s, t = np.sort(rng.uniform(0, 3, p)), np.sort(rng.uniform(0, 3, q))
    c, k = rng.integers(0, 2, p), rng.integers(0, 2, q)
    costs = {"insert_cost": rng.uniform(0.2, 1.5), "delete_cost": rng.uniform(0.2, 1.5)}
    assert otd(s, c, t, k, **costs) == pytest.approx(brute_otd(s, c, t, k, **costs), abs=1e-12)


def test_mean_otd_steps():
    pred = [(np.array([1.0, 2.0, 9.0]), np.array([0, 0, 1])), (np.array([0.5]), np.array([1]))]
    true = [(np.array([1.0, 2.5, 3.0]), np.array([0, 0, 0])), (np.array([0.5]), np.array([1]))]
    assert mean_otd(pred, true, **COSTS, steps=2) == pytest.approx(0.25)
    assert mean_otd(pred, true, **COSTS) == pytest.approx((0.5 + 1.7) / 2)


def one_hot(marks, k=2):
    return np.eye(k)[np.asarray(marks)]


def test_t_map_by_hand():
    times, marks = np.array([1.0, 2.0, 3.0]), np.array([0, 1, 0])
    same = t_map([0.0], [(times, one_hot(marks))], [(times, marks)], horizon=5.0, deltas=[0.5])
    assert same == pytest.approx(1.0)
    shifted = t_map(
        [0.0],
        [(np.array([1.0, 2.8, 3.0]), one_hot(marks))],
        [(times, marks)],
        horizon=5.0,
        deltas=[0.5],
    )
    assert shifted == pytest.approx(0.5)  # mark 1 is never matched
    both = t_map(
        [0.0],
        [(np.array([1.0, 2.8, 3.0]), one_hot(marks))],
        [(times, marks)],
        horizon=5.0,
        deltas=[0.5, 1.0],
    )
    assert both == pytest.approx(0.75)
    missing = t_map(
        [0.0], [(times[:2], one_hot(marks[:2]))], [(times, marks)], horizon=5.0, deltas=[0.5]
    )
    assert missing == pytest.approx((0.5 + 1.0) / 2)  # mark 0: recall stops at 1/2
    beyond = t_map(
        [0.0],
        [(times, one_hot(marks))],
        [(np.array([1.0, 2.0, 9.0]), marks)],
        horizon=5.0,
        deltas=[0.5],
    )
    assert beyond == pytest.approx((0.5 + 1.0) / 2)  # the true event at 9 lies beyond H


def test_t_map_ranking_by_hand():
    # Mark 0 over two points: scores 0.9 (hit), 0.8 (miss), 0.7 (hit), two true events.
    starts = [0.0, 10.0]
    predictions = [
        (np.array([1.0, 3.0]), np.array([[0.9, 0.1], [0.8, 0.2]])),
        (np.array([11.0]), np.array([[0.7, 0.3]])),
    ]
    targets = [(np.array([1.1]), np.array([0])), (np.array([11.2]), np.array([0]))]
    assert t_map(starts, predictions, targets, horizon=4.0, deltas=[0.5]) == pytest.approx(5 / 6)


def test_matching_prefers_more_pairs_then_higher_scores():
    # Prediction 0 (score 0.9) can take either target, prediction 1 only the first: two pairs.
    got = match_within(np.array([1.0, 0.4]), np.array([0.9, 0.1]), np.array([0.8, 1.5]), 0.5)
    np.testing.assert_array_equal(got, [True, True])
    got = match_within(np.array([1.0, 1.1]), np.array([0.2, 0.9]), np.array([1.05]), 0.5)
    np.testing.assert_array_equal(got, [False, True])


def brute_match(s, w, t, delta):
    """max (pairs, score) over all matchings and every matched set reaching it."""
    best, sets = None, set()
    for pairs in matchings(np.abs(s[:, None] - t[None, :]) <= delta):
        key = (len(pairs), round(sum(w[p] for p, _ in pairs), 9))
        if best is None or key > best:
            best, sets = key, set()
        if key == best:
            sets.add(frozenset(p for p, _ in pairs))
    return sets


def brute_ap(scores, hits, num_targets):
    """(1 / targets) Σ over hits of the precision at their rank (scores distinct)."""
    order = np.argsort(-scores)
    ranked = hits[order]
    return float(sum(ranked[: r + 1].mean() for r in range(ranked.size) if ranked[r]) / num_targets)


@pytest.mark.parametrize("seed", range(12))
def test_t_map_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    k, horizon, deltas = 3, 4.0, [0.3, 0.8]
    starts, predictions, targets = [], [], []
    for j in range(3):
        start = 10.0 * j
        p, q = rng.integers(0, 5, 2)
        starts.append(start)
        predictions.append((start + rng.uniform(0, 5, p), rng.dirichlet(np.ones(k), p)))
        targets.append((start + np.sort(rng.uniform(0, 5, q)), rng.integers(0, k, q)))
    if not any((t - s0 < horizon).any() for s0, (t, _) in zip(starts, targets, strict=True)):
        targets[0] = (np.array([1.0]), np.array([0]))
    aps = []
    for delta in deltas:
        for c in range(k):
            scores, hits, total = [], [], 0
            for s0, (s, w), (t, m) in zip(starts, predictions, targets, strict=True):
                keep, real = s - s0 < horizon, (t - s0 < horizon) & (m == c)
                total += int(real.sum())
                got = match_within(s[keep], w[keep, c], t[real], delta)
                assert frozenset(np.flatnonzero(got)) in brute_match(
                    s[keep], w[keep, c], t[real], delta
                )
                scores.append(w[keep, c])
                hits.append(got)
            if total:
                scores, hits = np.concatenate(scores), np.concatenate(hits)
                ap = brute_ap(scores, hits, total)
                assert average_precision(scores, hits, total) == pytest.approx(ap, abs=1e-12)
                aps.append(ap)
    got = t_map(starts, predictions, targets, horizon=horizon, deltas=deltas)
    assert got == pytest.approx(np.mean(aps), abs=1e-12)


def test_average_precision_ties_are_one_threshold():
    # Two tied predictions, one hit: precision 1/2 at recall 1.
    assert average_precision(np.array([0.5, 0.5]), np.array([True, False]), 1) == 0.5
    assert average_precision(np.array([0.5, 0.5]), np.array([False, True]), 1) == 0.5
