"""Interpolated Kneser-Ney: hand-computed probabilities, normalisation, decoding."""

import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.model import build_model
from seqlab.objectives.base import Batch


def ngram(vocab, **options):
    return build_model(ModelConfig(vocab_size=vocab, baseline="ngram", baseline_options=options))


def test_bigram_probabilities_equal_hand_computed_values():
    """Corpus (targets after position 0): rows 0 1 0 2 and 0 1 2, V = 3, D = 0.5.
    Bigrams: 0->1 x2, 1->0, 0->2, 1->2 (and the start->0 contexts are never targets: position
    0 is not predicted). Unigram continuation counts: N1+(· 1) = 1 (after 0), N1+(· 0) = 1,
    N1+(· 2) = 2 (after 0 and 1): total 4 distinct bigrams, 3 types."""
    model = ngram(3, order=2, discount=0.5)
    rows = torch.tensor([[0, 1, 0, 2], [0, 1, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    model.fit([Batch(rows, mask)])
    d = 0.5
    unigram = {w: (max(c - d, 0) + d * 3 / 3) / 4 for w, c in {0: 1, 1: 1, 2: 2}.items()}
    after_0 = {w: (max(c - d, 0) + d * 2 * unigram[w]) / 3 for w, c in {0: 0, 1: 2, 2: 1}.items()}
    after_1 = {w: (max(c - d, 0) + d * 2 * unigram[w]) / 2 for w, c in {0: 1, 1: 0, 2: 1}.items()}
    log_probs, _ = model(torch.tensor([[0, 1, 2]]))
    probs = log_probs.double().exp()[0]
    for w in range(3):
        assert probs[0, w].item() == pytest.approx(after_0[w], rel=1e-6)
        assert probs[1, w].item() == pytest.approx(after_1[w], rel=1e-6)
        assert probs[2, w].item() == pytest.approx(unigram[w], rel=1e-6)  # 2 never a context
    assert sum(unigram.values()) == pytest.approx(1.0)


def test_trigram_uses_start_padding_and_backs_off_for_unseen_contexts():
    model = ngram(4, order=3, discount=0.75)
    rows = torch.tensor([[1, 2, 3, 1, 2, 3], [2, 3, 1, 2, 3, 1]])
    model.fit([Batch(rows)])
    log_probs, _ = model(torch.tensor([[1, 2, 0, 0]]))
    probs = log_probs.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(1, 4), atol=1e-5)
    assert probs[0, 1, 3] > 0.5  # "1 2" is always followed by 3
    # contexts "0 0" and "<s> 0" are unseen at orders 3 and 2: both are the unigram level
    alone, _ = model(torch.tensor([[0]]))
    assert torch.allclose(probs[0, 3], alone.exp()[0, 0], atol=1e-6)
    assert not torch.allclose(probs[0, 3], probs[0, 1], atol=1e-2)
    assert bool((probs > 0).all())


@pytest.mark.parametrize("order", [1, 2, 4])
def test_full_forward_equals_token_by_token_decoding(order):
    torch.manual_seed(0)
    model = ngram(5, order=order)
    model.fit([Batch(torch.randint(0, 5, (6, 11)))])
    tokens = torch.randint(0, 5, (3, 9))
    full, _ = model(tokens)
    state, steps = model.init_state(3), []
    for t in range(9):
        out, state = model(tokens[:, t : t + 1], state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-6)
    assert math.isclose(float(full.exp().sum(-1).mean()), 1.0, rel_tol=1e-5)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="discount must lie in"):
        ngram(5, discount=1.5)
    with pytest.raises(ConfigError, match="unknown option"):
        ngram(5, smoothing=1.0)


def test_grams_opening_with_the_start_symbol_keep_raw_counts():
    """Order 4, V = 3, D = 0.75; rows 0 1 2, 0 1 1, 2 0 1 (s = start). After the prefix `0`
    the history is (s, s, 0). Order 4, context (s, s, 0): {1: 2}. Order 3, context (s, 0):
    it opens with s, so raw counts {1: 2} (its continuation count would be {1: 1}). Order 2,
    context (0): continuation {1: 2} (s 0 1, 2 0 1). Unigrams: distinct bigrams 0 1, 1 2,
    1 1, 2 0 -> {0: 1, 1: 2, 2: 1}."""
    model = ngram(3, order=4, discount=0.75)
    model.fit([Batch(torch.tensor([[0, 1, 2], [0, 1, 1], [2, 0, 1]]))])
    d = 0.75
    p1 = [c / 4 for c in (1, 2, 1)]  # (c - d + d * 3 / 3) / 4

    def level(counts, lower):
        total, types = sum(counts), sum(c > 0 for c in counts)
        return [(max(c - d, 0) + d * types * q) / total for c, q in zip(counts, lower, strict=True)]

    p2 = level([0, 2, 0], p1)
    p3 = level([0, 2, 0], p2)
    p4 = level([0, 2, 0], p3)
    probs = model(torch.tensor([[0]]))[0].double().exp()[0, 0]
    assert probs.tolist() == pytest.approx(p4, rel=1e-5)
    continuation = level([0, 1, 0], p2)  # the count this fix replaces: a visibly other answer
    assert abs(level([0, 2, 0], continuation)[0] - p4[0]) > 1e-3


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_discount_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError, match="ngram discount") as err:
        ngram(5, discount=value)
    assert "\n" not in str(err.value)


def test_option_values_are_converted_before_the_build():
    model = ngram(5, order=2.0, discount="0.5")
    assert model.order == 2 and isinstance(model.order, int) and model.discount == 0.5
