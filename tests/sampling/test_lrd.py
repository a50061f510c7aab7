"""Latent Refinement Decoding (`lrd`): soft masks, the KL stopping rule, and its reduction to
the confidence sampler."""

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective
from seqlab.registry import SAMPLERS
from seqlab.sampling import generate
from seqlab.sampling.diffusion import (
    LatentRefinement,
    RuleInputs,
    prediction_change,
    soft_embeddings,
    truncated,
)
from seqlab.testing import check_sampler

VOCAB = 7


def tiny(objective, mixer="attention"):
    vocab = objective.model_vocab_size(VOCAB)
    config = ModelConfig(
        mixer=mixer, d_model=32, n_layers=2, n_heads=4, vocab_size=vocab, init_std=0.5
    )
    torch.manual_seed(0)
    return seqlab.build_model(config).double()


def test_lrd_is_a_registered_diffusion_sampler_that_passes_the_kit():
    assert SAMPLERS.get("lrd").declared("paradigm") == "diffusion"
    assert check_sampler("lrd").ok
    assert check_sampler("lrd", mix=0.5, top_p=0.5, temperature=1.0, block_size=3).ok


def test_soft_embedding_is_the_expected_embedding_under_the_top_p_tokens():
    torch.manual_seed(1)
    probs = torch.softmax(2 * torch.randn(3, 4, VOCAB, dtype=torch.float64), -1)
    table = torch.randn(VOCAB + 1, 5, dtype=torch.float64)
    mask_id, mix, top_p = VOCAB, 0.3, 0.6
    soft = soft_embeddings(probs, table, mask_id, mix, top_p)
    for i in range(3):
        for j in range(4):
            p = probs[i, j]
            order = sorted(range(VOCAB), key=lambda v: -float(p[v]))
            kept, mass = [], 0.0
            for v in order:  # the most probable tokens until their mass reaches top_p
                kept.append(v)
                mass += float(p[v])
                if mass >= top_p:
                    break
            expected = sum(p[v] * table[v] for v in kept) / sum(p[v] for v in kept)
            reference = (1 - mix) * table[mask_id] + mix * expected
            torch.testing.assert_close(soft[i, j], reference)
    assert torch.equal(truncated(probs, 1.0) > 0, probs > 0)
    one = truncated(probs, 1e-9)  # top-p → 0 keeps the argmax alone
    assert torch.equal(one.argmax(-1), probs.argmax(-1)) and (one.max(-1).values == 1).all()
    torch.testing.assert_close(
        soft_embeddings(probs, table, mask_id, 0.0, 0.6), table[mask_id].expand(3, 4, 5)
    )


def _rule(mix=0.5, epsilon=1e-3, refine_steps=3, threshold=0.99):
    objective = build_objective("masked_diffusion", VOCAB)
    inputs = RuleInputs(objective, None, 0.0, None, tiny(objective))
    return LatentRefinement(inputs, mix, 0.9, epsilon, refine_steps, threshold), objective.mask_id


def test_refinement_stops_when_the_predictions_stop_changing():
    rule, mask = _rule()
    tokens = torch.full((2, 4), mask)
    free = torch.ones(2, 4, dtype=torch.bool)
    probs = torch.softmax(torch.randn(2, 4, VOCAB, dtype=torch.float64), -1)
    assert prediction_change(probs, probs, free).abs().max() == 0
    assert torch.equal(rule(tokens, probs, free, 0, 1), tokens)  # phase 1: nothing committed
    # the same prediction again: settled, so phase 2 starts and every mask is committed
    out = rule(tokens, probs, free, 1, 1)
    assert torch.equal(out, probs.argmax(-1))


def test_refinement_runs_at_most_refine_steps_soft_passes_while_predictions_change():
    rule, mask = _rule(refine_steps=3)
    tokens = torch.full((2, 4), mask)
    free = torch.ones(2, 4, dtype=torch.bool)
    for step in range(3):  # steps 1, 2, 3 read the soft masks fed after steps 0, 1, 2
        probs = torch.softmax(3 * torch.randn(2, 4, VOCAB, dtype=torch.float64), -1)
        assert torch.equal(rule(tokens, probs, free, step, 1), tokens), step
        assert rule.feed(tokens, probs, free).abs().sum() > 0
    probs = torch.softmax(3 * torch.randn(2, 4, VOCAB, dtype=torch.float64), -1)
    out = rule(tokens, probs, free, 3, 1)  # phase 2: at least the most confident per row
    assert ((out != mask).sum(1) >= 1).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_without_mixing_lrd_is_the_confidence_sampler(temperature, threshold):
    """mix = 0 (a soft mask is the mask) and epsilon = 0 (never settled): the confidence
    sampler, token for token and pass for pass."""
    objective = build_objective("masked_diffusion", VOCAB)
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(0))
    options = dict(
        max_new_tokens=8, objective=objective, seed=2, temperature=temperature, threshold=threshold
    )
    plain = generate(model, prompt, sampler="confidence", block_size=4, **options)
    soft = generate(model, prompt, sampler="lrd", mix=0.0, epsilon=0.0, block_size=4, **options)
    assert torch.equal(plain.tokens, soft.tokens) and plain.nfe == soft.nfe
    refined = generate(model, prompt, sampler="lrd", mix=0.5, block_size=4, **options)
    assert refined.nfe > plain.nfe  # the soft passes are counted


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_soft_masks_read_the_same_with_and_without_the_block_cache(mixer):
    objective = build_objective("block_diffusion", VOCAB, block_size=4)
    model = tiny(objective, mixer)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    runs = [
        generate(
            model,
            prompt,
            max_new_tokens=7,
            sampler="lrd",
            objective=objective,
            mix=0.6,
            epsilon=0.0,
            cache=cache,
        )
        for cache in (True, False)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


@pytest.mark.parametrize(("option", "value"), [("mix", 1.5), ("top_p", 0.0), ("epsilon", -1.0)])
def test_lrd_option_ranges(option, value):
    objective = build_objective("masked_diffusion", VOCAB)
    with pytest.raises(ConfigError, match=option):
        generate(tiny(objective), [[1]], max_new_tokens=2, sampler="lrd", **{option: value})
