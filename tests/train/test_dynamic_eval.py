"""Dynamic evaluation: the update rule by hand, the static segmented score against the plain
full-sequence NLL, lr 0 against static bit for bit, and adaptation to a repeated passage."""

from __future__ import annotations

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.train.dynamic_eval import (
    DynamicOptions,
    RMSUpdate,
    adapted_parameters,
    check_dynamic_model,
    dynamic_evaluate,
    gradient_rms,
    parse_dynamic_options,
    segmented_nll,
)

VOCAB = 64


def tiny(mixer: str, **kwargs):
    config = {"d_model": 32, "n_layers": 2, "n_heads": 2, "vocab_size": VOCAB, "mixer": mixer}
    return seqlab.build_model(ModelConfig(**{**config, **kwargs}))


def test_update_rule_by_hand():
    """θ ← θ − η g / (RMS + ε) + λ r (θ0 − θ), r = min(RMS / avg RMS, 1/λ); avg RMS here is
    the mean of the tensors' means (1.0 + 1.0) / 2 = 1."""
    a = torch.tensor([1.0, 2.0])
    b = torch.tensor([[3.0]])
    rms = [torch.tensor([0.5, 1.5]), torch.tensor([[1.0]])]
    update = RMSUpdate([a, b], rms, lr=0.1, decay=0.5, eps=0.5)
    a += torch.tensor([4.0, -8.0])  # θ0 + displacement
    b += 2.0
    update.step([torch.tensor([1.0, 2.0]), None])
    # a: λr = (0.25, 0.75): 5 − 0.25·4 − 0.1·1/1.0 = 3.9 ; −6 + 0.75·8 − 0.1·2/2.0 = −0.1
    # b: λr = 0.5, no gradient: 5 − 0.5·2 = 4
    torch.testing.assert_close(a, torch.tensor([3.9, -0.1]))
    torch.testing.assert_close(b, torch.tensor([[4.0]]))
    update.restore()
    assert torch.equal(a, torch.tensor([1.0, 2.0])) and torch.equal(b, torch.tensor([[3.0]]))


def test_decay_rate_is_capped_so_a_large_decay_lands_on_the_trained_weights():
    """λ r is capped at 1: with λ = 2 every parameter returns to θ0 in one step (λ r = 1),
    never past it."""
    a = torch.tensor([1.0, 2.0])
    update = RMSUpdate([a], [torch.tensor([0.5, 1.5])], lr=0.0, decay=2.0, eps=1e-3)
    a += torch.tensor([4.0, -8.0])
    update.step([torch.zeros(2)])
    assert torch.equal(a, torch.tensor([1.0, 2.0]))


def test_decay_pulls_adapted_weights_back_towards_the_trained_ones():
    a = torch.tensor([0.0])
    update = RMSUpdate([a], [torch.tensor([1.0])], lr=1.0, decay=0.5, eps=0.0)
    update.step([torch.tensor([-4.0])])  # θ = 4
    distances = [float(a)]
    for _ in range(3):
        update.step([torch.zeros(1)])
        distances.append(float(a))
    assert distances == [4.0, 2.0, 1.0, 0.5]


@pytest.mark.parametrize("mixer", ["attention", "gated_deltanet", "mamba2"])
def test_static_segments_with_carried_state_equal_the_full_sequence_nll(mixer):
    model = tiny(mixer).double()
    tokens = torch.randint(0, VOCAB, (2, 24))
    full = Autoregressive().nll(model, Batch(tokens))
    for segment in (1, 5, 23, 40):
        scored = segmented_nll(model, tokens, segment)
        assert scored.tokens == full.tokens == 2 * 23
        assert scored.nats == pytest.approx(full.nats, rel=1e-10)


def test_attention_context_keeps_exactly_the_keys_a_window_reads():
    """A window of 8 reads the 7 keys before a query: a carried context of 7 scores as the
    full windowed sequence; a context of 6 cuts a key the first query of a segment reads."""
    model = tiny("attention", window=8).double()
    tokens = torch.randint(0, VOCAB, (1, 30))
    full = Autoregressive().nll(model, Batch(tokens)).nats
    assert segmented_nll(model, tokens, 4, context=7).nats == pytest.approx(full, rel=1e-10)
    assert segmented_nll(model, tokens, 4, context=6).nats != pytest.approx(full, rel=1e-6)


@pytest.mark.parametrize("mixer", ["attention", "gated_deltanet"])
def test_lr_zero_is_the_static_score_bit_for_bit(mixer):
    model = tiny(mixer)
    tokens = torch.randint(0, VOCAB, (50,))
    train = [torch.randint(0, VOCAB, (2, 17)) for _ in range(2)]
    options = DynamicOptions(lr=0.0, decay=0.3, segment=8)
    static, dynamic = dynamic_evaluate(model, tokens, train, options)
    assert dynamic.nats == static.nats and dynamic.tokens == static.tokens == 49


@pytest.mark.parametrize("mixer", ["attention", "gated_deltanet"])
def test_adapting_to_a_repeated_passage_lowers_its_loss_by_a_wide_margin(mixer):
    """An untrained model cannot predict a random passage (≈ ln 64 = 4.2 nats per token);
    one repeated 16 times is learned by adapting on each segment: the mean NLL falls by more
    than half a nat below the static score, which stays near chance (lr 0 gives exactly the
    static score, so this is the adaptation's doing). The weights are restored."""
    model = tiny(mixer)
    before = [p.detach().clone() for p in adapted_parameters(model)]
    passage = torch.randint(0, 8, (32,))
    tokens = torch.cat([passage.repeat(16), passage[:1]])
    train = [torch.randint(0, VOCAB, (4, 33)) for _ in range(2)]
    options = DynamicOptions(lr=3e-4, segment=8, context=0)
    static, dynamic = dynamic_evaluate(model, tokens, train, options)
    assert static.per_token > 3.5
    assert dynamic.per_token < static.per_token - 0.6
    after = adapted_parameters(model)
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))


def test_rms_statistics_have_the_parameters_shapes_and_are_positive_where_used():
    model = tiny("gated_deltanet")
    params = adapted_parameters(model)
    rms = gradient_rms(model, [torch.randint(0, VOCAB, (2, 20))], 8)
    assert [r.shape for r in rms] == [p.shape for p in params]
    assert all(bool((r >= 0).all()) for r in rms) and float(rms[0].sum()) > 0


def test_runs_that_cannot_be_scored_segment_by_segment_are_config_errors():
    with pytest.raises(ConfigError, match="objective ar, got masked_diffusion"):
        check_dynamic_model(tiny("attention"), "masked_diffusion")
    with pytest.raises(ConfigError, match="layer 0's mixer Hydra"):
        check_dynamic_model(tiny("hydra"), "ar")
    check_dynamic_model(tiny("attention", layers=["gated_deltanet", "attention"]), "ar")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "KEY=VALUE"),
        ("lr", "KEY=VALUE"),
        ("lr=1e-3,", "KEY=VALUE"),
        ("lr=1,lr=2", "each key once"),
        ("decay=0.1", "needs lr"),
        ("lr=1e-3,nosuch=1", "valid keys"),
        ("lr=abc", "lr"),
        ("lr=-1", "lr must be"),
        ("lr=nan", "lr must be"),
        ("lr=1,decay=-0.5", "decay must be"),
        ("lr=1,segment=0", "segment"),
        ("lr=1,segment=2.5", "segment"),
        ("lr=1,eps=0", "eps must be"),
        ("lr=1,context=-1", "context"),
        ("lr=1,ms_batches=0", "ms_batches"),
    ],
)
def test_bad_dynamic_options_are_config_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_dynamic_options(text)


def test_options_parse():
    options = parse_dynamic_options("lr=1e-4, decay=0.02,segment=16,context=null")
    assert options == DynamicOptions(lr=1e-4, decay=0.02, segment=16)
