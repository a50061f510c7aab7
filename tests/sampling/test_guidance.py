"""Classifier-free guidance of diffusion sampling: schedules, the normalized and unnormalized
rules, and their endpoints (γ = 1: conditional sampling, γ = 0: unconditional)."""

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective
from seqlab.objectives.noise import absorbing_posterior
from seqlab.sampling import generate
from seqlab.sampling.diffusion import Guidance, absorbing_transition, guided_probs, tilt

VOCAB = 7
SCHEDULES = ["constant", "linear", "increasing"]
RULES = ["normalized", "unnormalized"]


def tiny(objective):
    vocab = objective.model_vocab_size(VOCAB)
    config = ModelConfig(
        mixer="attention", d_model=32, n_layers=1, n_heads=4, vocab_size=vocab, init_std=0.5
    )
    torch.manual_seed(0)
    return seqlab.build_model(config).double()


@pytest.mark.parametrize(
    ("schedule", "values"),
    [
        ("constant", {1.0: 3.0, 0.5: 3.0, 0.25: 3.0, 0.0: 3.0}),
        ("linear", {1.0: 1.0, 0.5: 2.0, 0.25: 2.5, 0.0: 3.0}),
        ("increasing", {1.0: 1.0, 0.5: 1.5, 0.25: 2.125, 0.0: 3.0}),
    ],
)
def test_schedules_take_their_values(schedule, values):
    guidance = Guidance(3.0, schedule)
    for t, expected in values.items():
        assert guidance.at(t) == pytest.approx(expected, abs=1e-12), (t, guidance.at(t))
    assert all(Guidance(1.0, schedule).at(t) == 1.0 for t in (0.0, 0.3, 1.0))


def test_tilt_is_exact_at_the_endpoints_and_normalised_between():
    p = torch.softmax(torch.randn(3, VOCAB, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(3, VOCAB, dtype=torch.float64), -1)
    assert torch.equal(tilt(p, q, 1.0)[0], p) and torch.equal(tilt(p, q, 0.0)[0], q)
    mixed, z = tilt(p, q, 2.5)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(z, (p**2.5 * q**-1.5).sum(-1))
    assert (z > 1).all() and (tilt(p, q, 0.5)[1] < 1).all()  # Hölder, p ≠ q


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_normalized_rule_keeps_the_expected_number_unmasked(schedule):
    """The probability that a mask is unmasked, summed over the masks (the expected number
    unmasked in the step), equals the unguided one under the normalized rule and grows with
    Z_γ > 1 under the unnormalized rule (γ = 3)."""
    raw = torch.softmax(3 * torch.randn(2, 2, 5, VOCAB, dtype=torch.float64), -1)
    alpha_t, alpha_s = (
        torch.tensor(0.3, dtype=torch.float64),
        torch.tensor(0.45, dtype=torch.float64),
    )
    unmask = absorbing_posterior(alpha_t, alpha_s)[0]
    t = 0.4
    plain, _ = absorbing_transition(unmask, raw[0], None, t)
    expected = {}
    for rule in RULES:
        guidance = Guidance(3.0, schedule, rule)
        probs = guided_probs(raw, guidance, t)
        chance, tokens = absorbing_transition(unmask, probs, guidance, t)
        torch.testing.assert_close(tokens, tilt(raw[0], raw[1], guidance.at(t))[0])
        expected[rule] = float(chance.sum())
    assert expected["normalized"] == pytest.approx(float(plain.sum()), abs=1e-12)
    assert expected["unnormalized"] > float(plain.sum()) + 0.05, expected
    # the unnormalized step is the geometric mix of the whole transition over N + 1 states
    guidance = Guidance(3.0, schedule, "unnormalized")
    chance, tokens = absorbing_transition(unmask, raw, guidance, t)
    whole = [torch.cat([unmask * p, (1 - unmask).expand(*p.shape[:-1], 1)], -1) for p in raw]
    mixed = tilt(whole[0], whole[1], guidance.at(t))[0]
    torch.testing.assert_close(chance, 1 - mixed[..., -1])
    torch.testing.assert_close(tokens * chance[..., None], mixed[..., :-1])


CASES = [
    ("masked_diffusion", "ancestral", RULES),
    ("uniform_diffusion", "ancestral", RULES),
    ("gamma_hybrid_diffusion", "ancestral", RULES),
    ("masked_diffusion", "confidence", ["normalized"]),
    ("masked_diffusion", "topk_confidence", ["normalized"]),
    ("masked_diffusion", "remask", ["normalized"]),
    ("masked_diffusion", "lrd", ["normalized"]),
]


@pytest.mark.parametrize(("name", "sampler", "rules"), CASES)
def test_guidance_endpoints_repeat_plain_sampling(name, sampler, rules):
    """γ = 1 repeats conditional sampling under every rule and schedule, γ = 0 (constant)
    repeats unconditional sampling (the null class), token for token under the same seed."""
    objective = build_objective(name, VOCAB, num_classes=3)
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(0))
    options = {"max_new_tokens": 6, "objective": objective, "seed": 3, "sampler": sampler}
    if sampler != "confidence" and sampler != "lrd":
        options["steps"] = 4
    if sampler == "lrd":
        options["mix"] = 0.5
    conditional = generate(model, prompt, condition=[0, 2], **options)
    unconditional = generate(model, prompt, **options)
    assert not torch.equal(conditional.tokens, unconditional.tokens)
    for rule in rules:
        for schedule in SCHEDULES:
            guided = dict(guidance_rule=rule, guidance_schedule=schedule, condition=[0, 2])
            one = generate(model, prompt, guidance=1.0, **guided, **options)
            assert torch.equal(one.tokens, conditional.tokens), (rule, schedule)
        zero = generate(
            model, prompt, guidance=0.0, condition=[0, 2], guidance_rule=rule, **options
        )
        assert torch.equal(zero.tokens, unconditional.tokens), rule
        strong = generate(
            model, prompt, guidance=4.0, condition=[0, 2], guidance_rule=rule, **options
        )
        assert strong.tokens.max() < VOCAB and torch.equal(strong.tokens[:, :3], prompt)


def test_unnormalized_rule_is_refused_outside_ancestral_sampling():
    objective = build_objective("masked_diffusion", VOCAB, num_classes=3)
    with pytest.raises(ConfigError, match="normalized"):
        generate(
            tiny(objective),
            [[1]],
            max_new_tokens=2,
            sampler="confidence",
            objective=objective,
            condition=1,
            guidance=2.0,
            guidance_rule="unnormalized",
        )
    with pytest.raises(ConfigError, match="guidance_schedule"):
        generate(
            tiny(objective),
            [[1]],
            max_new_tokens=2,
            sampler="ancestral",
            guidance_schedule="cosine",
        )
