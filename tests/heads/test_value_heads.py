"""Value heads: densities against references, decode = full forward, training, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from seqlab.config import ExperimentConfig, ModelConfig, from_dict
from seqlab.data.tasks import model_config_for
from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.model import build_model, unwrap
from seqlab.objectives import build_objective
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import VALUE_HEADS
from seqlab.train.precision import AutocastForward

HEADS = ["lognormal_mixture", "gaussian", "student_t"]


def model_with(head: str, mixer: str = "gated_deltanet", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        mixer=mixer,
        d_model=16,
        n_layers=2,
        n_heads=2,
        vocab_size=5,
        value_head=head,
        value_head_options=options,
    )
    return build_model(config).double()


def positive(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).gamma(2.0, 0.5, shape))


def test_registry_lists_the_heads() -> None:
    assert set(HEADS) <= set(VALUE_HEADS.names())


def test_lognormal_mixture_density_is_the_mixture_formula() -> None:
    head = (
        VALUE_HEADS.get("lognormal_mixture")
        .build(supplied={"d_model": 4}, components=3, shift=0.7, scale=1.9)
        .double()
    )
    parameters = torch.randn(2, 5, 9, dtype=torch.float64)
    tau = positive((2, 5))
    got = head.from_parameters(parameters).log_prob(tau)
    logits, mu, log_sigma = parameters.chunk(3, dim=-1)
    weights = logits.softmax(-1).numpy()
    means = (0.7 + 1.9 * mu).numpy()
    sigmas = (1.9 * log_sigma.exp()).numpy()
    x = tau.numpy()[..., None]
    density = (weights * stats.lognorm.pdf(x, s=sigmas, scale=np.exp(means))).sum(-1)
    np.testing.assert_allclose(got.numpy(), np.log(density), rtol=1e-10)


def test_real_heads_match_scipy() -> None:
    parameters = torch.randn(3, 4, 3, dtype=torch.float64)
    v = torch.randn(3, 4, dtype=torch.float64) * 3
    gauss = VALUE_HEADS.get("gaussian").build(supplied={"d_model": 4}, shift=1.0, scale=2.0)
    mu, s = parameters[..., :2].unbind(-1)
    std = 2.0 * (torch.nn.functional.softplus(s) + 1e-4)
    expected = stats.norm.logpdf(v.numpy(), loc=(1.0 + 2.0 * mu).numpy(), scale=std.numpy())
    np.testing.assert_allclose(
        gauss.from_parameters(parameters[..., :2]).log_prob(v).numpy(), expected, rtol=1e-10
    )
    student = VALUE_HEADS.get("student_t").build(supplied={"d_model": 4})
    df, mu, s = parameters.unbind(-1)
    df = 2.0 + torch.nn.functional.softplus(df)
    scale = torch.nn.functional.softplus(s) + 1e-4
    expected = stats.t.logpdf(v.numpy(), df=df.numpy(), loc=mu.numpy(), scale=scale.numpy())
    np.testing.assert_allclose(
        student.from_parameters(parameters).log_prob(v).numpy(), expected, rtol=1e-10
    )


@pytest.mark.parametrize("head", HEADS)
def test_samples_follow_the_distribution(head: str) -> None:
    """Kolmogorov-Smirnov distance of 20,000 samples to the head's own CDF < 0.02 (the 1e-6
    critical value is 0.017 and a wrong scale or shift gives several times that)."""
    built = VALUE_HEADS.get(head).build(supplied={"d_model": 4}, shift=0.5, scale=2.0).double()
    parameters = 0.5 * torch.randn(4, built.outputs, dtype=torch.float64)
    distribution = built.from_parameters(parameters)
    torch.manual_seed(1)
    draws = distribution.sample((20000,)).sort(dim=0).values
    empirical = torch.arange(1, draws.shape[0] + 1, dtype=torch.float64)[:, None] / draws.shape[0]
    if head == "student_t":  # torch's StudentT has no cdf
        cdf = torch.from_numpy(
            stats.t.cdf(
                draws.numpy(),
                df=distribution.df.numpy(),
                loc=distribution.loc.numpy(),
                scale=distribution.scale.numpy(),
            )
        )
    else:
        cdf = distribution.cdf(draws)
    assert (cdf - empirical).abs().max() < 0.02


@pytest.mark.parametrize("head", HEADS)
def test_log_prob_gradients_against_finite_differences(head: str) -> None:
    built = VALUE_HEADS.get(head).build(supplied={"d_model": 4}, shift=0.3, scale=1.5).double()
    parameters = torch.randn(2, 3, built.outputs, dtype=torch.float64, requires_grad=True)
    values = positive((2, 3), seed=2) if built.support == "positive" else torch.randn(2, 3).double()
    assert torch.autograd.gradcheck(
        lambda p: built.from_parameters(p).log_prob(values), (parameters,)
    )


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("mixer", ["attention", "gated_deltanet", "lstm"])
def test_token_by_token_decoding_equals_the_full_forward(head: str, mixer: str) -> None:
    model = model_with(head, mixer)
    tokens = torch.randint(0, 5, (3, 13))
    values = positive((3, 13), seed=3)
    logits, distribution, _ = model.marked(tokens, values)
    state = model.init_state(3)
    steps, log_probs = [], []
    for t in range(13):
        step_logits, step_distribution, state = model.marked(
            tokens[:, t : t + 1], values[:, t : t + 1], state
        )
        steps.append(step_logits)
        log_probs.append(step_distribution.log_prob(values[:, t : t + 1]))
    torch.testing.assert_close(torch.cat(steps, 1), logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        torch.cat(log_probs, 1), distribution.log_prob(values), rtol=1e-9, atol=1e-9
    )


def test_values_are_causal_inputs() -> None:
    """Changing the value at position 6 changes no prediction before it, and the next."""
    model = model_with("lognormal_mixture")
    tokens = torch.randint(0, 5, (2, 10))
    values = positive((2, 10), seed=4)
    changed = values.clone()
    changed[:, 6] += 3.0
    before = model.marked(tokens, values)[1].log_prob(values)
    after = model.marked(tokens, changed)[1].log_prob(values)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert (before[:, 6] - after[:, 6]).abs().min() > 1e-6


def test_ar_learns_a_value_that_the_mark_determines() -> None:
    """Log-normal gaps (σ 0.3) of median 0.1 after mark 0 and 3.0 after mark 1: the value NLL
    falls well below the best that ignores the marks (≈ 0.30 nats; the truth ≈ −0.39)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            mixer="gated_deltanet",
            d_model=32,
            n_layers=1,
            n_heads=2,
            vocab_size=2,
            value_head="lognormal_mixture",
            value_head_options={"components": 2},
        )
    )
    objective = Autoregressive().bind(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    recent = []
    for _ in range(250):
        marks = torch.randint(0, 2, (32, 12), generator=generator)
        noise = 0.3 * torch.randn(32, 12, generator=generator)
        gaps = torch.where(marks == 0, 0.1, 3.0) * noise.exp()
        values = torch.cat([torch.zeros(32, 1), gaps[:, :-1]], dim=1)
        loss, metrics = objective.loss(model, Batch(marks, values=values))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], metrics["value_nll"]]
    assert sum(recent) / len(recent) < 0.0, recent


def test_nll_counts_scored_values_and_adds_both_parts() -> None:
    model = model_with("gaussian")
    objective = Autoregressive().bind(5)
    tokens = torch.randint(0, 5, (2, 9))
    values = torch.randn(2, 9, dtype=torch.float64)
    value_mask = torch.zeros(2, 9, dtype=torch.bool)
    value_mask[:, 5:] = True
    token_mask = torch.zeros_like(value_mask)
    result = objective.nll(model, Batch(tokens, token_mask, values=values, value_mask=value_mask))
    _, distribution, _ = model.marked(tokens[:, :-1], values[:, :-1])
    expected = -distribution.log_prob(values[:, 1:])[:, 4:].sum().detach()
    assert result.tokens == 8
    assert result.nats == pytest.approx(float(expected), rel=1e-9)


def test_nll_counts_a_position_scored_by_either_mask_once() -> None:
    model = model_with("gaussian")
    objective = Autoregressive().bind(5)
    tokens = torch.randint(0, 5, (2, 9))
    values = torch.randn(2, 9, dtype=torch.float64)
    token_mask = torch.zeros(2, 9, dtype=torch.bool)
    token_mask[:, 3:] = True
    value_mask = torch.zeros_like(token_mask)
    value_mask[:, 5:] = True
    batch = Batch(tokens, token_mask, values=values, value_mask=value_mask)
    nll, mask, value_nll, scored = objective.scored_nll(model, batch)
    result = objective.nll(model, batch)
    assert result.tokens == 12  # targets 2 .. 7 of each row: tokens from 2, values from 4
    expected = ((nll * mask).sum() + (value_nll * scored).sum()).detach()
    assert result.nats == pytest.approx(float(expected), rel=1e-9)
    same = objective.nll(model, Batch(tokens, value_mask, values=values))
    assert same.tokens == 8  # one count per event where the masks coincide


def test_value_targets_are_scored_in_float32_under_bf16_autocast() -> None:
    """A bf16 target rounds 100.3 to 100.5: with a value std near 0.07 that alone moves the
    NLL by several nats; the targets must be scored in the distribution's float32."""
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=16,
        n_heads=2,
        vocab_size=5,
        value_head="gaussian",
        value_head_options={"shift": 100.0, "scale": 0.1},
    )
    model = build_model(config)
    objective = Autoregressive().bind(5)
    tokens = torch.randint(0, 5, (2, 7))
    values = torch.full((2, 7), 100.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, value_nll, _ = objective.scored_nll(model, Batch(tokens, values=values))
        _, _, parameters = model(tokens[:, :-1], values=values[:, :-1])
    assert parameters.dtype == torch.bfloat16
    head = model.value_head
    expected = -head.from_parameters(parameters.float()).log_prob(values[:, 1:])
    torch.testing.assert_close(value_nll, expected, rtol=1e-5, atol=1e-4)


def test_lognormal_mixture_mean_is_finite_for_its_widest_components() -> None:
    """log σ at its clamp 3 with scale 1.4: exp(m + s²/2) is about e^395, past float32."""
    head = VALUE_HEADS.get("lognormal_mixture").build(
        supplied={"d_model": 4}, components=2, shift=0.5, scale=1.4
    )
    parameters = torch.tensor([[[0.0, 1.0, 0.2, -0.1, 3.0, -1.0]]])
    mean = head.from_parameters(parameters).mean
    logits, mu, log_sigma = parameters.double().numpy().reshape(3, 2)
    weights = np.exp(logits) / np.exp(logits).sum()
    m = 0.5 + 1.4 * mu
    s = 1.4 * np.exp(log_sigma)
    log_mean = np.log(weights) + m + s**2 / 2
    expected = np.exp(log_mean.max()) * np.exp(log_mean - log_mean.max()).sum()
    assert torch.isfinite(mean).all()
    assert float(mean) == pytest.approx(expected, rel=1e-9)


def test_shift_and_scale_travel_in_the_saved_weights(tmp_path) -> None:
    from seqlab.io import initialize_from, load, model_state, save

    model = model_with("gaussian", shift=1.5, scale=2.5).float()
    assert {"value_head.shift", "value_head.scale"} <= set(model_state(model))
    save(model, tmp_path / "saved")
    loaded = load(tmp_path / "saved")
    assert float(loaded.value_head.shift) == 1.5 and float(loaded.value_head.scale) == 2.5
    other = model_with("gaussian", shift=-1.0, scale=2.5).float()
    with pytest.warns(UserWarning, match="value_head.shift"):
        initialize_from(other, tmp_path / "saved")
    assert float(other.value_head.shift) == -1.0  # the new run's own, as its config says
    torch.testing.assert_close(other.value_head.encoder.weight, model.value_head.encoder.weight)


def test_token_samplers_refuse_a_model_with_a_value_head() -> None:
    from seqlab.sampling import generate
    from seqlab.sampling.ar import fill
    from seqlab.sampling.beam import beam_search
    from seqlab.sampling.speculative import speculative_decode

    model = model_with("gaussian", mixer="attention")
    plain = build_model(ModelConfig(d_model=16, n_heads=2, vocab_size=5)).double()
    prompt = torch.randint(0, 5, (2, 4))
    calls = [
        lambda: generate(model, prompt, max_new_tokens=2),
        lambda: generate(model, prompt, max_new_tokens=2, sampler="beam", num_beams=2),
        lambda: generate(plain, prompt, max_new_tokens=2, draft_model=model),
        lambda: beam_search(model, prompt, 2, num_beams=2),
        lambda: speculative_decode(
            plain,
            AutocastForward(model, precision=None),
            prompt,
            2,
            num_draft_tokens=2,
            do_sample=False,
        ),
        lambda: fill(model, prompt, torch.ones_like(prompt, dtype=torch.bool)),
        lambda: Autoregressive().bind(5).generate(model, Batch(prompt, values=torch.rand(2, 4))),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="rollout_events") as error:
            call()
        assert "\n" not in str(error.value)
    assert generate(plain, prompt, max_new_tokens=2).tokens.shape == (2, 6)
    _, distribution, _ = model.marked(prompt, positive((2, 4)))  # Model.marked still works
    assert distribution.batch_shape == (2, 4)


def test_value_parameters_pass_through_wrappers() -> None:
    model = model_with("student_t")
    assert unwrap(AutocastForward(model, precision=None)) is model
    tokens = torch.randint(0, 5, (2, 6))
    values = torch.randn(2, 6, dtype=torch.float64)
    logits, state, parameters = model(tokens, values=values)
    assert state is None and parameters.shape == (2, 6, 3) and logits.shape == (2, 6, 5)


def test_bad_values_and_missing_heads_are_one_line_errors() -> None:
    plain = build_model(ModelConfig(d_model=16, n_heads=2, vocab_size=5))
    tokens = torch.randint(0, 5, (2, 6))
    with pytest.raises(SeqlabError, match="no value head"):
        plain(tokens, values=torch.rand(2, 6))
    with pytest.raises(ConfigError, match="value head"):
        Autoregressive().bind(5).loss(plain, Batch(tokens, values=torch.rand(2, 6)))
    model = model_with("lognormal_mixture")
    with pytest.raises(ShapeError, match=">= 0"):
        model(tokens, values=-torch.rand(2, 6, dtype=torch.float64))
    with pytest.raises(ShapeError, match="shape"):
        model(tokens, values=torch.rand(2, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="finite"):
        model(tokens, values=torch.full((2, 6), math.nan, dtype=torch.float64))
    with pytest.raises(ConfigError, match="scale"):
        model_with("gaussian", scale=0.0)
    with pytest.raises(ConfigError, match="components"):
        model_with("lognormal_mixture", components=0)
    with pytest.raises(ConfigError, match="unknown option"):
        model_with("gaussian", components=3)


class _TaskWithValues:
    name = "toy"
    vocab_size = 7
    value_head = "lognormal_mixture"
    value_head_options = {"shift": -1.0, "scale": 2.0, "components": 4}


def test_model_config_takes_the_tasks_head_under_the_users_options() -> None:
    objective = build_objective("ar", 7)
    chosen = model_config_for(ModelConfig(), _TaskWithValues(), objective)
    assert chosen.vocab_size == 7 and chosen.value_head == "lognormal_mixture"
    assert chosen.value_head_options == {"shift": -1.0, "scale": 2.0, "components": 4}
    tuned = ModelConfig(value_head="lognormal_mixture", value_head_options={"components": 2})
    assert (
        model_config_for(tuned, _TaskWithValues(), objective).value_head_options["components"] == 2
    )


class _RealTask:
    name = "real"
    vocab_size = 7
    value_head = "gaussian"
    value_head_options = {"shift": 3.0, "scale": 2.0}


class _TokensOnly:
    name = "tokens"
    vocab_size = 7
    value_head = None
    value_head_options = None


def test_another_head_keeps_the_tasks_standardisation_and_needs_its_support() -> None:
    objective = build_objective("ar", 7)
    other = model_config_for(ModelConfig(value_head="student_t"), _RealTask(), objective)
    assert other.value_head == "student_t"
    assert other.value_head_options == {"shift": 3.0, "scale": 2.0}
    mine = ModelConfig(value_head="student_t", value_head_options={"scale": 5.0})
    assert model_config_for(mine, _RealTask(), objective).value_head_options == {
        "shift": 3.0,
        "scale": 5.0,
    }
    for head, task in (("gaussian", _TaskWithValues()), ("lognormal_mixture", _RealTask())):
        with pytest.raises(ConfigError, match="values, but model.value_head") as error:
            model_config_for(ModelConfig(value_head=head), task, objective)
        assert "\n" not in str(error.value)


def test_a_value_head_without_values_and_options_without_a_head_are_refused() -> None:
    objective = build_objective("ar", 7)
    with pytest.raises(ConfigError, match="never be trained"):
        model_config_for(ModelConfig(value_head="gaussian"), _TokensOnly(), objective)
    assert model_config_for(ModelConfig(), _TokensOnly(), objective).value_head is None
    with pytest.raises(ConfigError, match="value_head_options is set"):
        ModelConfig(value_head_options={"scale": 2.0})


def test_objectives_that_do_not_read_values_are_refused() -> None:
    from seqlab.data.tasks.base import Task

    task = _TaskWithValues()
    with pytest.raises(ConfigError, match="does not read"):
        Task.check_objective(task, build_objective("masked_diffusion", 7))
    with pytest.raises(ConfigError, match="does not read"):
        Task.check_objective(task, build_objective("mtp", 7))


def test_experiment_config_round_trips_the_value_head() -> None:
    config = from_dict(
        ExperimentConfig,
        {"model": {"value_head": "gaussian", "value_head_options": {"scale": 3.0}}},
    )
    assert config.model.value_head == "gaussian"
    with pytest.raises(ConfigError, match="value head"):
        ModelConfig(value_head=" ")
