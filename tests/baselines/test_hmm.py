"""HMM: decoding equals the full forward, EM is monotone, a toy HMM is recovered."""

import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.model import build_model
from seqlab.objectives.base import Batch

TRANSITION = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
EMISSION = torch.tensor([[0.85, 0.1, 0.05], [0.05, 0.1, 0.85]], dtype=torch.float64)


def hmm(vocab, **options):
    return build_model(ModelConfig(vocab_size=vocab, baseline="hmm", baseline_options=options))


def sample(rows, length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = torch.multinomial(torch.tensor([0.5, 0.5]), rows, True, generator=generator)
    tokens = torch.empty(rows, length, dtype=torch.long)
    for t in range(length):
        tokens[:, t] = torch.multinomial(EMISSION[state], 1, generator=generator)[:, 0]
        state = torch.multinomial(TRANSITION[state], 1, generator=generator)[:, 0]
    return tokens


def test_full_forward_equals_token_by_token_decoding_and_sums_to_one():
    torch.manual_seed(0)
    model = hmm(5, states=3, iterations=3)
    model.fit([Batch(torch.randint(0, 5, (16, 10)))])
    tokens = torch.randint(0, 5, (4, 13))
    full, _ = model(tokens)
    state, steps = model.init_state(4), []
    for t in range(13):
        out, state = model(tokens[:, t : t + 1], state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-6)
    assert torch.allclose(full.double().exp().sum(-1), torch.ones(4, 13, dtype=torch.float64))


def test_em_never_decreases_the_training_log_likelihood():
    torch.manual_seed(1)
    model = hmm(3, states=3, iterations=15, tolerance=0.0, smoothing=0.0)
    tokens = sample(40, 20)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:10, 12:] = False  # shorter rows: their ends are marginalised out
    model.fit([Batch(tokens, mask)])
    history = model.log_likelihoods
    assert len(history) == 15
    assert all(b >= a - 1e-6 for a, b in zip(history, history[1:], strict=False))
    assert history[-1] > history[0] + 1e-3


def test_em_recovers_a_two_state_hmm():
    torch.manual_seed(0)
    model = hmm(3, states=2, iterations=60, smoothing=0.0)
    model.fit([Batch(sample(300, 30))])
    first = int(model.emission[:, 0].argmax())  # the state that mostly emits token 0
    order = [first, 1 - first]
    transition = model.transition[order][:, order]
    emission = model.emission[order]
    assert torch.allclose(transition, TRANSITION, atol=0.1)
    assert torch.allclose(emission, EMISSION, atol=0.1)


def test_smoothing_keeps_every_token_possible():
    model = hmm(6, states=2, iterations=2)
    model.fit([Batch(torch.tensor([[0, 1, 0, 1, 0]]))])
    log_probs, _ = model(torch.tensor([[0, 5, 3]]))
    assert bool(torch.isfinite(log_probs).all())


@pytest.mark.parametrize(
    "bad",
    [
        {"states": 0},
        {"iterations": 0},
        {"smoothing": -1.0},
        {"smoothing": float("inf")},
        {"smoothing": float("nan")},
        {"tolerance": -1.0},
        {"tolerance": float("nan")},
    ],
)
def test_bad_options(bad):
    from seqlab.errors import ConfigError

    with pytest.raises(ConfigError, match="^hmm ") as err:
        hmm(4, **bad)
    assert "\n" not in str(err.value)


def test_em_starts_from_the_unigram_frequencies():
    """On a corpus where token 0 is 90% of the tokens, the starting point already predicts
    far better than uniform (the old near-uniform start scored about -log V)."""
    torch.manual_seed(0)
    tokens = torch.where(torch.rand(40, 20) < 0.9, 0, torch.randint(1, 6, (40, 20)))
    model = hmm(6, states=3, iterations=1)
    model.fit([Batch(tokens)])
    assert model.log_likelihoods[0] > -math.log(6) + 0.5


def test_em_stops_at_the_tolerance_and_keeps_its_curve():
    torch.manual_seed(0)
    model = hmm(3, states=2, smoothing=0.0)
    assert model.iterations == 100 and model.tolerance == 1e-4
    model.fit([Batch(sample(100, 20))])
    history = model.log_likelihoods
    assert 2 <= len(history) < 100
    gains = [b - a for a, b in zip(history, history[1:], strict=False)]
    assert gains[-1] < 1e-4 <= min(gains[:-1], default=1.0)
    assert model.fit_curve == [-value for value in history]


def test_option_values_are_converted_before_the_build():
    model = hmm(4, states=2.0, iterations=3.0)
    assert model.states == 2 and isinstance(model.states, int)
    model.fit([Batch(torch.randint(0, 4, (4, 6)))])
