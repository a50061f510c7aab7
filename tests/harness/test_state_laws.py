"""Power laws in error against state size for a comparison: the fit recovers a known law from
aggregated rows, refuses what it cannot fit and says why, and reaches the report and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqlab.harness.compare import aggregate, write_report
from seqlab.harness.grid import CompareConfig
from seqlab.harness.report import leaderboard_markdown, state_laws_by_task, write_plots
from seqlab.harness.state_laws import MIN_SIZES, applies, state_size_laws

CONFIG = CompareConfig(metric={"t": "accuracy"})
E, A, ALPHA = 0.02, 30.0, 0.5
SIZES = (256, 512, 1024, 2048, 4096, 8192)


def _runs(backbone: str, size: float, accuracies: list[float], metric: str = "accuracy"):
    point = f"{backbone}-{size}"
    return [
        {
            "point_id": point,
            "task": "t",
            "scores_answers": True,
            "backbone": backbone,
            "paradigm": "ar",
            "lr": 0.1,
            "seed": seed,
            "seconds": 1.0,
            f"val_{metric}": value,
            f"test_{metric}": value,
            "params": 10,
            "d_model": 8,
            "state_size": size,
            "train_flops": 1e6,
            "run_id": f"{point}-{seed}",
        }
        for seed, value in enumerate(accuracies)
    ]


def _law_rows(backbone: str = "gdn", sizes=SIZES, noise: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        error = E + A * size ** (-ALPHA)
        rows += _runs(backbone, size, list(1.0 - error * np.exp(noise * rng.standard_normal(3))))
    return aggregate(CONFIG, rows)


def test_the_fit_recovers_a_known_law_from_aggregated_seeds():
    (law,) = state_size_laws(_law_rows())
    assert law.skipped is None and law.perfect == 0
    fit = law.fit
    assert len(fit.x) == 3 * len(SIZES)  # every seed is a point; the bootstrap draws grid points
    assert fit.alpha.value == pytest.approx(ALPHA, abs=0.1)
    # the interval brackets the truth up to a margin wider than refit rounding can move it
    assert fit.alpha.ci.low < ALPHA + 0.05 and fit.alpha.ci.high > ALPHA - 0.05
    assert fit.alpha.ci.high - fit.alpha.ci.low < 0.3
    assert fit.E.value == pytest.approx(E, abs=0.03)
    check = law.held_out
    assert check.scale.tolist() == [8192.0] * 3  # the largest state size, all its seeds
    assert check.predicts and check.mean_relative_error < 0.05


def test_too_few_state_sizes_and_perfect_points_are_said_not_fitted():
    few = _law_rows(sizes=SIZES[: MIN_SIZES - 1])
    (law,) = state_size_laws(few)
    assert law.fit is None and f"a fit needs {MIN_SIZES}" in law.skipped
    perfect = aggregate(
        CONFIG,
        sum((_runs("a", s, [1.0 - E - A * s**-ALPHA] * 2) for s in SIZES[:4]), [])
        + _runs("a", 16384, [1.0, 1.0]),
    )
    (law,) = state_size_laws(perfect)
    assert law.perfect == 2 and law.fit is not None and 16384 not in law.fit.x


def test_only_accuracy_type_metrics_at_several_state_sizes_call_for_laws():
    assert applies(_law_rows())
    one_size = aggregate(CONFIG, _runs("a", 256, [0.5]) + _runs("b", 512, [0.6]))
    assert not applies(one_size)
    nll = CompareConfig(metric={"t": "nll"})
    rows = sum((_runs("a", s, [1.0], metric="nll") for s in SIZES), [])
    assert not applies(aggregate(nll, rows))


def test_the_report_lists_each_backbone_law_or_why_not():
    results = _law_rows() + aggregate(CONFIG, _runs("attn", 100, [0.4]) + _runs("attn", 200, [0.5]))
    laws = state_laws_by_task(results)
    lines = leaderboard_markdown(CONFIG, results, [], laws).splitlines()
    start = lines.index("### Error against state size: 1 − accuracy = E + A·S^(−α)")
    table = lines[start + 2 : start + 6]
    assert table[2].startswith("| attn/ar | not fitted: 2 state size(s)")
    assert table[3].startswith(f"| gdn/ar | {3 * len(SIZES)} |")
    saved = json.loads(json.dumps({k: [law.to_dict() for law in v] for k, v in laws.items()}))
    attn, gdn = saved["t"]
    assert attn["fit"] is None and gdn["fit"]["alpha"]["value"] == laws["t"][1].fit.alpha.value
    assert len(gdn["held_out"]["observed"]) == 3


def test_a_report_without_laws_removes_an_earlier_reports_file(tmp_path):
    rows = sum((_runs("gdn", s, [0.5, 0.6]) for s in SIZES[:MIN_SIZES]), [])
    write_report(CONFIG, tmp_path, rows, plots=False)
    assert "gdn/ar" in (tmp_path / "state_laws.json").read_text()
    write_report(CONFIG, tmp_path, _runs("gdn", 256, [0.5]), plots=False)
    assert not (tmp_path / "state_laws.json").exists()


def test_the_state_size_plot_draws_the_fitted_law(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **_: drawn.append(fig))
    results = _law_rows()
    (law,) = state_laws_by_task(results)["t"]
    write_plots(tmp_path, results, [], {"t": [law]})
    state_axes = next(fig.axes[0] for fig in drawn if "state size" in fig.axes[0].get_xlabel())
    dashed = [line for line in state_axes.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    x, y = dashed[0].get_data()
    assert x[0] == pytest.approx(min(SIZES)) and x[-1] == pytest.approx(max(SIZES))
    np.testing.assert_allclose(y, 1.0 - law.fit.predict(x))
