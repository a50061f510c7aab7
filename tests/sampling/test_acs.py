"""The adaptive correction sampler (`acs`): the kit, its reduction to ancestral sampling with
correction off, and a hand-built step where exactly the confidently contradicted token is
corrected."""

from __future__ import annotations

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective
from seqlab.registry import SAMPLERS
from seqlab.sampling import generate
from seqlab.sampling.acs import acs_rule
from seqlab.sampling.diffusion import RuleInputs, diffusion_objective
from seqlab.testing import check_sampler

VOCAB = 7


def tiny(objective):
    config = ModelConfig(
        d_model=32,
        n_layers=1,
        n_heads=4,
        vocab_size=objective.model_vocab_size(VOCAB),
        init_std=0.5,
    )
    torch.manual_seed(0)
    return seqlab.build_model(config).double()


def test_acs_is_a_registered_diffusion_sampler_that_passes_the_kit():
    assert SAMPLERS.get("acs").declared("paradigm") == "diffusion"
    assert check_sampler("acs").ok
    assert check_sampler("acs", threshold=0.1, temperature=0.7, block_size=3).ok
    assert check_sampler("acs", objective="epsilon_hybrid_diffusion", threshold=0.1).ok


@pytest.mark.parametrize(
    "name, options",
    [
        ("masked_diffusion", {}),
        ("block_diffusion", {"block_size": 4}),
        ("epsilon_hybrid_diffusion", {}),
    ],
)
def test_with_correction_off_acs_is_ancestral(name, options):
    objective = build_objective(name, VOCAB, **options)
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (3, 3), generator=torch.Generator().manual_seed(1))
    common = {"max_new_tokens": 9, "objective": objective, "steps": 4, "seed": 2}
    plain = generate(model, prompt, sampler="ancestral", **common)
    off = generate(model, prompt, sampler="acs", threshold=1.0, **common)
    assert torch.equal(plain.tokens, off.tokens) and plain.nfe == off.nfe
    greedy = generate(model, prompt, sampler="ancestral", temperature=0.0, **common)
    greedy_off = generate(model, prompt, sampler="acs", threshold=1.0, temperature=0.0, **common)
    assert torch.equal(greedy.tokens, greedy_off.tokens)
    # a low threshold corrects: other tokens (seen for this model and seed)
    on = generate(model, prompt, sampler="acs", threshold=0.0, **common)
    assert not torch.equal(plain.tokens, on.tokens)


def test_a_confidently_contradicted_token_and_only_it_is_corrected():
    """Row: [decoded 2 (x̂_0 says 5 at 0.95), decoded 3 (x̂_0 agrees), decoded 4 (x̂_0 says 1
    at 0.6 < τ), prompt 6 outside the free positions (x̂_0 says 0 at 0.99), mask]."""
    objective = diffusion_objective(tiny(build_objective("masked_diffusion", VOCAB)), None)
    mask = objective.mask_id
    generator = torch.Generator().manual_seed(0)
    rule = acs_rule(RuleInputs(objective, generator, 1.0, None, None), threshold=0.9)
    tokens = torch.tensor([[2, 3, 4, 6, mask]])
    free = torch.tensor([[True, True, True, False, True]])
    probs = torch.full((1, 5, VOCAB), 0.01, dtype=torch.float64)
    for i, (v, p) in enumerate([(5, 0.95), (3, 0.95), (1, 0.6), (0, 0.99), (2, 0.99)]):
        probs[0, i] = (1 - p) / (VOCAB - 1)
        probs[0, i, v] = p
    new = rule(tokens, probs, free, step=3, steps=4)  # the last step: the mask is decoded
    assert new[0, :4].tolist() == [5, 3, 4, 6]
    assert new[0, 4] != mask


def test_nfe_counts_every_model_call():
    objective = build_objective("block_diffusion", VOCAB, block_size=3)
    model = tiny(objective)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    out = generate(
        model,
        [[1, 2]],
        max_new_tokens=7,
        sampler="acs",
        objective=objective,
        threshold=0.0,
        steps=3,
        seed=0,
        cache=False,
    )
    hook.remove()
    assert out.nfe == len(calls)


def test_acs_threshold_range():
    objective = build_objective("masked_diffusion", VOCAB)
    with pytest.raises(ConfigError, match="threshold"):
        generate(tiny(objective), [[1]], max_new_tokens=2, sampler="acs", threshold=-0.5)
