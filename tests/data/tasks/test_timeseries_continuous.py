"""The `timeseries` task with a continuous output (`gaussian`, `student_t` value heads): batches
carry the mean-scaled values, forecasts are drawn ancestrally from the head, `nll` is the
head's, and the forecast metrics share the bins' windows and scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import seqlab
from seqlab.config import ModelConfig
from seqlab.data.tasks import model_config_for
from seqlab.data.tasks.timeseries import TimeSeriesForecasting, mase
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective


def sine_task(tmp_path, **options) -> TimeSeriesForecasting:
    values = 5.0 * np.sin(2 * math.pi * np.arange(80) / 8) + 7.0
    path = tmp_path / "s.csv"
    path.write_text("id,value\n" + "".join(f"a,{float(v)!r}\n" for v in values))
    defaults = dict(context=16, horizon=4, test_windows=2, validation_windows=1, num_bins=64)
    return TimeSeriesForecasting(
        path=str(path), series_column="id", limit=2.0, **{**defaults, **options}
    )


def model_for(task: TimeSeriesForecasting, head_bias: list[float] | None = None):
    """A tiny model for `task`; `head_bias`: the value head fixed to these parameters."""
    torch.manual_seed(0)
    config = model_config_for(
        ModelConfig(d_model=16, n_layers=1, n_heads=2), task, build_objective("ar")
    )
    model = seqlab.build_model(config)
    if head_bias is not None:
        with torch.no_grad():
            model.value_head.projection.weight.zero_()
            model.value_head.projection.bias.copy_(torch.tensor(head_bias))
    return model


def softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


def test_continuous_batches_carry_the_scaled_values_beside_the_same_tokens(tmp_path):
    bins, task = sine_task(tmp_path), sine_task(tmp_path, output="gaussian")
    assert bins.value_head is None and bins.batch("train", 0, 4, seed=0).values is None
    assert task.value_head == "gaussian" and task.value_head_options == {"shift": 0, "scale": 1}
    config = model_config_for(ModelConfig(), task, build_objective("ar"))
    assert config.value_head == "gaussian" and config.value_head_options["scale"] == 1
    batch, tokens = task.batch("train", 3, 8, seed=1), bins.batch("train", 3, 8, seed=1).tokens
    assert torch.equal(batch.tokens, tokens) and batch.values.dtype == torch.float32
    assert not batch.mask.any() and batch.value_mask.all()
    scaled = batch.values.double().numpy()
    assert np.allclose(np.abs(scaled[:, :16]).mean(axis=1), 1.0, atol=1e-5)  # mean-scaled
    # the tokens are the bins of the same values (within float32 rounding at a bin edge)
    error = np.abs(bins.binning.decode(tokens.numpy(), 1.0) - scaled)
    assert error.max() <= bins.binning.width / 2 + 1e-6
    row = next(task.eval_batches("test", 1))
    window = task.windows["test"][0]
    raw = task.window_values(window)
    assert np.allclose(row.values[0].numpy(), raw / np.abs(raw[:16]).mean(), atol=1e-5)
    assert not row.mask.any() and row.value_mask[0, 16:].all() and not row.value_mask[0, :16].any()
    # the loss is the head's NLL alone, and it trains the head
    objective = build_objective("ar")
    model = model_for(task)
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    assert metrics["token_nll"] == 0.0 and metrics["nll"] == pytest.approx(metrics["value_nll"])
    assert model.value_head.projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("output", ["gaussian", "student_t"])
def test_samples_of_a_fixed_head_follow_its_distribution(tmp_path, output):
    task = sine_task(tmp_path, output=output, num_samples=500)
    loc, sigma, df = 0.5, 0.3, 4.0
    if output == "gaussian":
        bias, law = [loc, softplus_inverse(sigma - 1e-4)], stats.norm(loc, sigma)
    else:
        bias = [softplus_inverse(df - 2.0), loc, softplus_inverse(sigma - 1e-4)]
        law = stats.t(df, loc, sigma)
    model = model_for(task, bias)
    windows = task.windows["test"]
    samples = task.forecast_samples(model, windows, range(len(windows)), batch_size=2)
    contexts = np.stack([task.window_values(w)[:16] for w in windows])
    scaled = samples / np.abs(contexts).mean(axis=1)[:, None, None]
    assert samples.shape == (2, 500, 4)
    assert scaled.mean() == pytest.approx(loc, abs=0.05)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert np.quantile(scaled, q) == pytest.approx(law.ppf(q), abs=0.05)
    one_by_one = task.forecast_samples(model, windows, range(len(windows)), batch_size=1)
    assert np.array_equal(samples, one_by_one)


def test_each_drawn_value_and_its_bin_are_fed_back(tmp_path, monkeypatch):
    task = sine_task(tmp_path, output="student_t", num_samples=3)
    model = model_for(task)
    fed = []
    marked = model.marked

    def spy(tokens, values, state):
        fed.append((tokens.clone(), values.clone()))
        return marked(tokens, values, state)

    monkeypatch.setattr(model, "marked", spy)
    window = task.windows["test"][0]
    samples = task.forecast_samples(model, [window], [0], batch_size=1)[0]
    assert [t.shape for t, _ in fed] == [(3, 16)] + [(3, 1)] * 3
    scale = np.abs(task.window_values(window)[:16]).mean()
    for step, (tokens, values) in enumerate(fed[1:]):
        assert np.allclose(values[:, 0].numpy(), samples[:, step] / scale, rtol=1e-9)
        bins = task.binning.encode(values[:, 0].numpy(), 1.0)
        assert np.array_equal(tokens[:, 0].numpy(), bins)


def test_nll_is_the_heads_and_forecasts_share_the_bins_scaling(tmp_path):
    task = sine_task(tmp_path, output="gaussian", test_windows=1, num_samples=5)
    bins = sine_task(tmp_path, test_windows=1, num_samples=5)
    loc, sigma = 1.1, 0.4
    model = model_for(task, [loc, softplus_inverse(sigma - 1e-4)])
    objective = build_objective("ar").bind(task.vocab_size)
    metrics = task.evaluate(model, objective, split="test")
    (window,) = task.windows["test"]
    raw = task.window_values(window)
    scale = np.abs(raw[:16]).mean()
    target = torch.from_numpy((raw[16:] / scale).astype(np.float32)).double()
    by_hand = -torch.distributions.Normal(loc, sigma).log_prob(target).mean().item()
    assert metrics["nll"] == pytest.approx(by_hand, rel=1e-5) and metrics["tokens"] == 4
    assert "accuracy" not in metrics
    # a nearly certain head forecasts loc × the context's mean |value|, scored as the bins are
    sharp = model_for(task, [loc, -30.0])
    metrics = task.evaluate(sharp, objective, split="test")
    history = task.values[0][: window.origin]
    assert metrics["mase"] == pytest.approx(mase(loc * scale, raw[16:], history, 1), rel=1e-3)
    reference = bins.evaluate(model_for(bins), objective, split="test")
    for key in ("naive_mase", "naive_smape", "naive_crps"):
        assert metrics[key] == reference[key]


def test_options_and_objectives_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="output must be one of bins, gaussian, student_t"):
        sine_task(tmp_path, output="laplace")
    task = sine_task(tmp_path, output="student_t")
    for name in ("masked_diffusion", "mtp"):
        with pytest.raises(ConfigError, match="use an objective that does \\(ar\\)") as error:
            task.check_objective(build_objective(name))
        assert "\n" not in str(error.value)
    task.check_objective(build_objective("ar"))
