"""The `timeseries` task: mean scaling and bins, splits in time, MASE/sMAPE/CRPS by hand, the
seasonal naive, an untrained and a tiny trained AR model, and the statsmodels series."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.data.tasks.timeseries import (
    DATASETS,
    FIRST_BIN,
    Binning,
    TimeSeriesForecasting,
    mase,
    naive_scale,
    sample_crps,
    seasonal_naive,
    smape,
)
from seqlab.errors import ConfigError, DataError
from seqlab.harness.grid import HIGHER_IS_BETTER
from seqlab.objectives import build_objective
from tests.helpers import train_steps


def write_series(path, series: dict[str, np.ndarray]):
    lines = ["id,value"] + [f"{k},{float(x)!r}" for k, v in series.items() for x in v]
    path.write_text("\n".join(lines) + "\n")
    return path


def sine(length: int, period: int = 8, amplitude: float = 5.0) -> np.ndarray:
    return amplitude * np.sin(2 * math.pi * np.arange(length) / period)


def task_on(path, **options) -> TimeSeriesForecasting:
    defaults = dict(context=16, horizon=4, test_windows=2, validation_windows=1, num_bins=64)
    return TimeSeriesForecasting(
        path=str(path), series_column="id", **{**defaults, "limit": 2.0, **options}
    )


def test_scaling_and_binning_round_trip_within_half_a_bin():
    rng = np.random.default_rng(0)
    binning = Binning(num_bins=100, limit=3.0)
    values = rng.normal(5.0, 2.0, size=(6, 40))
    scale = Binning.scale(values[:, :30])
    inside = np.abs(values / scale) <= binning.limit
    tokens = binning.encode(values, scale)
    assert tokens.min() >= FIRST_BIN and tokens.max() < FIRST_BIN + 100
    error = np.abs(binning.decode(tokens, scale) - values)
    assert inside.mean() > 0.9
    assert (
        error[inside] <= binning.width / 2 * np.broadcast_to(scale, values.shape)[inside] + 1e-9
    ).all()
    # beyond the limit values clip into the end bins; a zero context scales by 1
    assert binning.encode(np.array([1e9, -1e9]), np.ones(1)).tolist() == [FIRST_BIN + 99, FIRST_BIN]
    assert Binning.scale(np.zeros((1, 4))).item() == 1.0


def test_splits_are_in_time_without_leakage(tmp_path):
    values = {"a": np.arange(60.0) + 1, "b": np.arange(45.0) + 100}
    task = task_on(write_series(tmp_path / "s.csv", values))
    assert task.names == ["s/a", "s/b"] and task.train_end == [48, 33]
    assert [w.origin for w in task.windows["validation"]] == [48, 33]
    assert [w.origin for w in task.windows["test"]] == [52, 56, 37, 41]
    for split in ("validation", "test"):
        tokens, mask = task._rows[split]
        assert mask[:, :16].sum() == 0 and mask[:, 16:].all()
        for window, row in zip(task.windows[split], tokens, strict=True):
            raw = task.window_values(window)
            assert raw[15] == task.values[window.series][window.origin - 1]  # context ends before
            scale = np.abs(raw[:16]).mean()  # scaled by the context alone
            assert np.allclose(
                task.binning.decode(row[16:], scale), raw[16:], atol=task.binning.width * scale
            )
    for step in range(20):  # training rows: context + horizon, every position scored
        batch = task.batch("train", step, 8, seed=3)
        assert batch.tokens.shape == (8, 20) and batch.mask.all()
    batch = task.batch("train", 0, 64, seed=0)
    assert torch.equal(batch.tokens, task.batch("train", 0, 64, seed=0).tokens)
    assert not torch.equal(batch.tokens, task.batch("train", 1, 64, seed=0).tokens)
    halves = [task.batch("train", 2, 4, seed=0, rank=r, world_size=2).tokens for r in (0, 1)]
    assert torch.equal(torch.cat(halves), task.batch("train", 2, 8, seed=0).tokens)


def test_training_windows_never_reach_held_out_points(tmp_path):
    # the held-out part is a huge level: any training row touching it would clip to the top bin
    values = np.concatenate([np.ones(40), np.full(12, 1e6)])
    task = task_on(write_series(tmp_path / "s.csv", {"a": values}), test_windows=2)
    for step in range(50):
        tokens = task.batch("train", step, 16, seed=0).tokens
        assert (tokens < FIRST_BIN + 63).all()


def test_metrics_by_hand():
    actual = np.array([1.0, 2.0, 3.0])
    forecast = np.array([2.0, 2.0, 1.0])
    history = np.array([0.0, 1.0, 3.0, 4.0])  # lag-1 MAE = (1 + 2 + 1) / 3
    assert mase(forecast, actual, history, 1) == pytest.approx(1.0 / (4 / 3))
    assert math.isnan(mase(forecast, actual, np.ones(5), 1))
    by_hand = 200 / 3 * (1 / 3 + 0 + 2 / 4)
    assert smape(forecast, actual) == pytest.approx(by_hand)
    assert smape(np.zeros(2), np.zeros(2)) == 0.0
    point = sample_crps(np.tile(forecast, (5, 1)), actual)
    assert np.allclose(point, np.abs(forecast - actual))
    two = sample_crps(np.array([[0.0], [2.0]]), np.array([0.0]))  # 1 − ½·(2·2/4)
    assert two.item() == pytest.approx(0.5)
    normal = np.random.default_rng(0).standard_normal((4000, 1))
    assert sample_crps(normal, np.zeros(1)).item() == pytest.approx(0.2337, abs=0.03)


def test_seasonal_naive_is_exact_on_a_periodic_series_of_its_season():
    pattern = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    series = np.tile(pattern, 8)
    history, actual = series[:30], series[30:37]
    assert np.array_equal(seasonal_naive(history, 7, 5), actual)
    assert mase(seasonal_naive(history, 7, 5), actual, history, 1) == 0.0
    assert mase(seasonal_naive(history, 7, 3), actual, history, 1) > 0.3
    assert naive_scale(history, 5) == 0.0
    assert seasonal_naive(np.array([1.0, 2.0]), 2, 7).tolist() == [2.0, 2.0]  # m > n: last


def tiny_model(task, d_model=16):
    torch.manual_seed(0)
    config = ModelConfig(d_model=d_model, n_layers=1, n_heads=2, vocab_size=task.vocab_size)
    return seqlab.build_model(config)


def test_an_untrained_model_is_near_chance(tmp_path):
    task = task_on(write_series(tmp_path / "s.csv", {"a": sine(80)}), num_samples=4)
    metrics = task.evaluate(tiny_model(task), build_objective("ar"), split="test")
    assert abs(metrics["nll"] - math.log(64)) < 0.7
    assert metrics["tokens"] == 2 * 4
    for key in ("mase", "smape", "crps", "naive_mase", "naive_smape", "naive_crps"):
        assert math.isfinite(metrics[key]) and HIGHER_IS_BETTER[key] is False
    assert task.metric_of_record == "mase"


def test_a_tiny_model_learns_a_sine(tmp_path):
    task = task_on(
        write_series(tmp_path / "s.csv", {"a": sine(300)}), test_windows=4, num_samples=16
    )
    model = tiny_model(task, d_model=32)
    objective = build_objective("ar")
    objective.bind(task.vocab_size)
    train_steps(model, objective, task, steps=150, batch_size=16, lr=1e-2)
    metrics = task.evaluate(model, objective, split="test")
    # the last value repeated 4 steps errs far more than one step in-sample (MASE about 2.6);
    # the trained model about 0.02
    assert metrics["naive_mase"] > 1.5
    assert metrics["mase"] < 0.5 and metrics["crps"] < 0.3
    again = task.evaluate(model, objective, split="test", batch_size=3)
    assert again["mase"] == pytest.approx(metrics["mase"], rel=1e-9)


def test_statsmodels_series_load_with_deterministic_splits():
    task = TimeSeriesForecasting(
        series=list(DATASETS),
        context=32,
        horizon=6,
        test_windows=2,
        validation_windows=1,
        num_bins=32,
        num_samples=2,
    )
    again = TimeSeriesForecasting(
        series=list(DATASETS),
        context=32,
        horizon=6,
        test_windows=2,
        validation_windows=1,
        num_bins=32,
        num_samples=2,
    )
    lengths = dict(zip(task.names, (len(v) for v in task.values), strict=True))
    assert lengths["sunspots"] == 309 and lengths["elnino"] == 61 * 12 and lengths["nile"] == 100
    assert lengths["realgdp"] == 203 and 2200 < lengths["co2"] <= 2284
    assert all(np.isfinite(v).all() for v in task.values)
    from statsmodels.datasets import elnino

    first_year = elnino.load_pandas().data.iloc[0, 1:].to_numpy(dtype=float)
    assert np.array_equal(task.values[task.names.index("elnino")][:12], first_year)
    for split in ("validation", "test"):
        assert np.array_equal(task._rows[split][0], again._rows[split][0])
    for s, values in enumerate(task.values):
        assert task.train_end[s] == len(values) - 18
    assert torch.equal(
        task.batch("train", 5, 4, seed=1).tokens, again.batch("train", 5, 4, seed=1).tokens
    )


def test_options_and_objectives_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown series 'airline'"):
        TimeSeriesForecasting(series=["airline"])
    with pytest.raises(ConfigError, match="horizon must be an integer"):
        TimeSeriesForecasting(horizon=0)
    for limit in (float("inf"), True, 0.0):
        with pytest.raises(ConfigError, match="limit must be a positive finite number"):
            TimeSeriesForecasting(limit=limit)
    with pytest.raises(ConfigError, match="season must be a positive integer"):
        TimeSeriesForecasting(season=True)
    with pytest.raises(DataError, match="need"):
        task_on(write_series(tmp_path / "s.csv", {"a": np.ones(20)}))
    with pytest.raises(DataError, match="no column 'price'"):
        TimeSeriesForecasting(
            path=str(write_series(tmp_path / "t.csv", {"a": np.ones(40)})), value_column="price"
        )
    task = task_on(write_series(tmp_path / "u.csv", {"a": sine(60)}))
    with pytest.raises(ConfigError, match="needs an AR objective"):
        task.check_objective(build_objective("masked_diffusion"))
