import math

import numpy
import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.noise import Hyperschedule, build_schedule

VOCAB = 5
MASK = VOCAB


def tiny(vocab=VOCAB + 1):
    config = ModelConfig(mixer="attention", d_model=32, n_layers=2, n_heads=4, vocab_size=vocab)
    return seqlab.build_model(config).double()


def chain_rule(model, tokens):
    """Σ_i −log x̂_0^i from a bidirectional pass over [x_<i, MASK, …, MASK]: the AR model that
    a width-1 staircase trains, computed position by position."""
    b, length = tokens.shape
    total = torch.zeros(b, dtype=torch.float64)
    with torch.no_grad():
        for i in range(length):
            x = torch.cat([tokens[:, :i], torch.full((b, length - i), MASK)], dim=1)
            logp = model(x, layout=Layout.BIDIRECTIONAL)[0][:, i, :VOCAB].log_softmax(-1)
            total -= logp.gather(-1, tokens[:, i : i + 1]).squeeze(-1)
    return float(total.sum())


@pytest.mark.parametrize("kind", ["staircase", "sliding"])
def test_width_one_with_the_count_estimator_is_exactly_the_chain_rule(kind):
    """Each row's eval draws are spaced 1/k apart: with k = L they hit every position's
    window once, where that position alone is masked after a clean prefix (weight L · 1/L)."""
    model = tiny()
    tokens = torch.randint(0, VOCAB, (3, 7))
    objective = build_objective(
        "masked_diffusion",
        VOCAB,
        hyperschedule={"kind": kind, "width": 1},
        estimator="count",
        eval_samples=7,
    )
    result = objective.nll(model, Batch(tokens))
    expected = chain_rule(model, tokens)
    assert result.bound and result.tokens == 21
    assert math.isclose(result.nats, expected, rel_tol=1e-12), (result.nats, expected)


def test_staircase_of_width_one_noises_in_order_with_the_time_estimator():
    """At a global t inside position k's window, earlier positions are clean, later ones
    masked, and position k's term is 0 or L · w(τ) · (−log x̂_0) with the chain-rule context."""
    model = tiny()
    tokens = torch.randint(0, VOCAB, (64, 4))
    objective = build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "staircase"})
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, layout):
            seen.append(x.clone())
            return model(x, layout=layout)

    for k in range(4):
        tau = 0.3
        t = torch.full(tokens.shape, (3 - k + tau) / 4, dtype=torch.float64)
        with torch.no_grad():
            terms = objective.elbo_terms(Spy(), Batch(tokens), t)[0]
        x = seen[-1]
        assert torch.equal(x[:, :k], tokens[:, :k]) and (x[:, k + 1 :] == MASK).all()
        masked = x[:, k] == MASK
        assert 0 < masked.sum() < 64
        assert (terms[:, :k] == 0).all() and (terms[:, k + 1 :] == 0).all()
        assert (terms[~masked, k] == 0).all()
        with torch.no_grad():
            logp = model(x, layout=Layout.BIDIRECTIONAL)[0][:, k, :VOCAB].log_softmax(-1)
        expected = -4 / tau * logp.gather(-1, tokens[:, k : k + 1]).squeeze(-1)
        torch.testing.assert_close(terms[masked, k], expected[masked], rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "spec", [("staircase", 1), ("staircase", 3), ("sliding", 1), ("sliding", 4)]
)
@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_each_positions_elbo_weight_integrates_to_one(spec, schedule):
    """The absorbing ELBO of a position whose x̂_0 is fixed is ∫ τ′ (1 − α(τ)) w(τ) dt ·
    (−log x̂_0): the weight must integrate to exactly 1 over global time, for every position
    (the chain rule then gives the sum of conditionals, as a flat schedule does)."""
    kind, width = spec
    hyper, alpha = Hyperschedule(kind, width), build_schedule(schedule)
    length = 7
    speed, lag = hyper.speed_and_lag(length, torch.device("cpu"))
    nodes, weights = (torch.from_numpy(a) for a in numpy.polynomial.legendre.leggauss(40))
    for i in range(length):
        # integrate over the ramp [lag/speed, (lag + 1)/speed] where τ′ = speed
        low, high = float(lag[i]) / speed, (float(lag[i]) + 1) / speed
        t = low + (high - low) * (nodes + 1) / 2
        tau, rate = hyper.levels(t[None, :].expand(length, -1).T.contiguous())
        tau, rate = tau[:, i], rate[:, i]
        integrand = rate * alpha.noise_rate(tau) * alpha.weight(tau)
        total = float((integrand * weights).sum() * (high - low) / 2)
        assert math.isclose(total, 1.0, rel_tol=1e-9), (i, total)
        outside = torch.tensor([low / 2, (high + 1) / 2], dtype=torch.float64)
        _, rate_out = hyper.levels(outside[:, None].expand(-1, length))
        assert (rate_out[:, i] == 0).all() or high >= 1


@pytest.mark.parametrize("name", ["masked_diffusion", "uniform_diffusion"])
def test_flat_is_todays_diffusion_exactly(name):
    model = tiny(vocab=build_objective(name, VOCAB).model_vocab_size(VOCAB))
    batch = Batch(torch.randint(0, VOCAB, (4, 9)))
    today = build_objective(name, VOCAB)
    flat = build_objective(name, VOCAB, hyperschedule={"kind": "flat"})
    wide = build_objective(name, VOCAB, hyperschedule={"kind": "staircase", "width": 9})
    for method in ("nll", "loss"):
        results = []
        for objective in (today, flat, wide):
            torch.manual_seed(5)
            results.append(getattr(objective, method)(model, batch))
        if method == "nll":
            assert results[0] == results[1]
            assert math.isclose(results[0].nats, results[2].nats, rel_tol=1e-12)
        else:
            assert torch.equal(results[0][0], results[1][0])
            torch.testing.assert_close(results[0][0], results[2][0], rtol=1e-12, atol=0)


def test_levels_and_groups():
    hyper = Hyperschedule("staircase", 2)
    t = torch.tensor([[0.5] * 5, [1.0] * 5, [0.0] * 5], dtype=torch.float64)
    tau, rate = hyper.levels(t)  # 3 blocks: {0,1} last, {4} first
    assert tau[0].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and rate[0].tolist() == [0, 0, 3, 3, 0]
    assert (tau[1] == 1).all() and (tau[2] == 0).all()
    assert hyper.groups(5, torch.device("cpu")).tolist() == [0, 0, 1, 1, 2]
    sliding = Hyperschedule("sliding", 3)
    tau, _ = sliding.levels(torch.full((1, 6), 0.5, dtype=torch.float64))
    assert (tau.diff() >= 0).all()  # later positions are noised first
    assert ((tau > 0) & (tau < 1)).sum() <= 3
    assert sliding.groups(6, torch.device("cpu")) is None
    assert Hyperschedule("sliding", 1).groups(3, torch.device("cpu")).tolist() == [0, 1, 2]


def test_hyperschedule_user_errors():
    with pytest.raises(ConfigError, match="kind"):
        build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "zigzag"})
    with pytest.raises(ConfigError, match="width"):
        build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "sliding", "width": 0})
    with pytest.raises(ConfigError, match="keys"):
        build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "flat", "size": 2})
    with pytest.raises(ConfigError, match="sliding"):
        build_objective(
            "masked_diffusion",
            VOCAB,
            hyperschedule={"kind": "sliding", "width": 2},
            estimator="count",
        )


def test_training_under_a_hyperschedule_gives_finite_gradients():
    objective = build_objective(
        "uniform_diffusion", VOCAB, hyperschedule={"kind": "sliding", "width": 2}
    )
    model = tiny(vocab=VOCAB).float()
    loss, metrics = objective.loss(model, Batch(torch.randint(0, VOCAB, (8, 6))))
    loss.backward()
    assert torch.isfinite(loss) and "nll_bound" in metrics
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
