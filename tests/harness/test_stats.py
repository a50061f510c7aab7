"""Intervals over seeds and the separation of adjacent leaderboard rows (harness/stats.py)."""

from __future__ import annotations

import math

import pytest

from seqlab.harness.compare import aggregate
from seqlab.harness.grid import CompareConfig
from seqlab.harness.report import leaderboard_markdown
from seqlab.harness.stats import mean_interval, separation, separation_lines

T_975_2DOF = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
T_975_6DOF = 2.446912  # 6 degrees of freedom
CONFIG = CompareConfig(metric={"t": "nll"})


def test_the_interval_of_three_values_is_the_hand_computed_t_interval():
    values = [2.390, 2.408, 2.433]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = T_975_2DOF * std / math.sqrt(3)
    low, high = mean_interval(values)
    assert low == pytest.approx(mean - half, abs=1e-5)
    assert high == pytest.approx(mean + half, abs=1e-5)
    assert mean_interval([2.39]) is None and mean_interval([1.0, math.nan]) is None


def test_welch_separates_clearly_separated_rows_with_the_hand_computed_interval():
    better, worse = [1.0, 1.1, 0.9, 1.05], [2.0, 2.1, 1.9, 2.05]
    test = separation(better, worse, higher_is_better=False)
    # equal sizes and variances: Welch's degrees of freedom are n_a + n_b - 2 = 6
    mean = sum(better) / 4
    variance = sum((v - mean) ** 2 for v in better) / 3
    half = T_975_6DOF * math.sqrt(2 * variance / 4)
    assert test.delta == pytest.approx(1.0)
    assert (test.low, test.high) == pytest.approx((1.0 - half, 1.0 + half), abs=1e-5)
    assert test.separated and test.p < 1e-4 and test.paired_p is None
    (line,) = separation_lines([(None, better, None), (None, worse, None)], False)
    assert line.startswith("rank 1 vs 2: Δ = 1.0000 (Welch 95% CI [")
    assert line.endswith("p < 0.001): separated")


def test_welch_does_not_separate_overlapping_rows_and_follows_the_metric_direction():
    better, worse = [0.80, 0.60, 0.75], [0.70, 0.78, 0.55]  # accuracy: higher is better
    test = separation(better, worse, higher_is_better=True)
    assert test.delta == pytest.approx(0.04) and test.low < 0 < test.high
    assert not test.separated and 0.3 < test.p < 1
    labelled = [("ar", better, [0, 1, 2]), ("masked", worse, [2, 1, 0])]
    (line,) = separation_lines(labelled, True)
    assert line.startswith("rank 1 (ar) vs 2 (masked): Δ = 0.0400 (Welch 95% CI [-")
    assert "; paired p = " in line and line.endswith("): not separated at 95%")
    # identical rows: a tie, p = 1
    assert separation(better, better, True).p == pytest.approx(1.0)


def test_a_row_with_one_seed_gets_no_interval():
    lines = separation_lines(
        [(None, [1.0, 1.1], None), (None, [1.5], None), (None, [], None)], higher_is_better=False
    )
    assert lines == ["rank 1 vs 2: one seed: no interval", "rank 2 vs 3: one seed: no interval"]
    assert separation([1.0], [1.5, 1.6], False) is None


def test_zero_variance_rows_are_stated_not_tested():
    lines = separation_lines(
        [(None, [1.0, 1.0], None), (None, [1.2, 1.2], None), (None, [1.2, 1.2], None)], False
    )
    assert lines == [
        "rank 1 vs 2: Δ = 0.2000: zero variance on both sides, no test: every seed gives the "
        "same Δ",
        "rank 2 vs 3: Δ = 0.0000: zero variance on both sides, no test: tied",
    ]
    one_sided = separation([1.0, 1.0, 1.0], [1.3, 1.5, 1.4], False)
    assert all(math.isfinite(x) for x in (one_sided.low, one_sided.high, one_sided.p))
    assert one_sided.delta == pytest.approx(0.4) and one_sided.separated


def _runs(point: str, nlls: list[float]) -> list[dict]:
    return [
        {
            "point_id": point,
            "task": "t",
            "scores_answers": False,
            "backbone": point,
            "paradigm": "ar",
            "lr": 0.1,
            "seed": seed,
            "seconds": 1.0,
            "val_nll": nll,
            "test_nll": nll,
            "params": 10,
            "state_size": 5,
            "train_flops": 1e6,
            "run_id": f"{point}{seed}",
        }
        for seed, nll in enumerate(nlls)
    ]


def test_the_leaderboard_carries_intervals_and_separation_lines():
    rows = _runs("a", [1.0, 1.1, 0.9]) + _runs("b", [2.0, 2.1, 1.9]) + _runs("c", [2.1, 1.8, 1.95])
    results = aggregate(CONFIG, rows)
    a = next(r for r in results if r["point_id"] == "a")
    assert a["test_nll_seeds"] == "1.0;1.1;0.9" and a["seed_list"] == "0;1;2"
    assert (a["test_nll_ci95_low"], a["test_nll_ci95_high"]) == pytest.approx(
        mean_interval([1.0, 1.1, 0.9])
    )
    lines = leaderboard_markdown(CONFIG, results, []).splitlines()
    header = next(line for line in lines if line.startswith("| rank"))
    assert "| nll ↓ | 95% CI |" in header
    first = next(line for line in lines if line.startswith("| 1 |"))
    assert f"| [{a['test_nll_ci95_low']:.4f}, {a['test_nll_ci95_high']:.4f}] |" in first
    tested = [line for line in lines if line.startswith("- rank")]
    assert len(tested) == 2 and tested[0].endswith(": separated")
    assert tested[1].startswith("- rank 2 vs 3: Δ = 0.0500") and "not separated" in tested[1]
    # one seed per row: no interval column, and each line says why
    single = aggregate(CONFIG, _runs("a", [1.0]) + _runs("b", [2.0]))
    lines = leaderboard_markdown(CONFIG, single, []).splitlines()
    assert "95% CI" not in "\n".join(lines)
    assert "- rank 1 vs 2: one seed: no interval" in lines


def test_a_bound_row_keeps_its_bound_mark_after_aggregation():
    bound = [{**row, "test_bound": True} for row in _runs("b", [2.0, 2.2])]
    results = aggregate(CONFIG, _runs("a", [1.0, 1.1]) + bound)
    assert [r["test_bound"] for r in results] == [False, True]
    lines = leaderboard_markdown(CONFIG, results, []).splitlines()
    assert "| ≤ 2.1000 ± " in next(line for line in lines if line.startswith("| 2 |"))
    assert "| 1.0500 ± " in next(line for line in lines if line.startswith("| 1 |"))
