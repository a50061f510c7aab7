import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ShapeError, UnknownNameError


def tiny():
    torch.manual_seed(0)
    return seqlab.build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=20))


def test_greedy_equals_argmax_of_full_recompute():
    model = tiny()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = seqlab.generate(model, prompt, max_new_tokens=6)
    tokens = prompt
    for _ in range(6):
        logits, _ = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.tokens, tokens)
    assert out.nfe == 6 and out.seconds > 0


def test_sampling_is_seeded_and_keeps_prompt():
    model = tiny()
    a = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=1)
    b = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=1)
    c = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=2)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens[0, :2].tolist() == [1, 2] and a.tokens.shape == (1, 12)
    assert int(a.tokens.max()) < 20


def test_sampling_follows_model_distribution():
    """Empirical next-token frequencies match softmax(logits) (χ² over 4000 draws)."""
    model = tiny()
    prompt = torch.tensor([[3, 4]])
    probs = model(prompt)[0][0, -1].softmax(-1).double()
    draws = seqlab.generate(model, prompt.repeat(4000, 1), max_new_tokens=1, sampler="sample",
                            seed=0).tokens[:, -1]
    counts = torch.bincount(draws, minlength=20).double()
    expected = probs * 4000
    keep = expected > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2 < 45  # 19 degrees of freedom: p ≈ 0.0007


def test_bad_prompt_and_sampler_are_explained():
    model = tiny()
    with pytest.raises(ShapeError, match="share one length"):
        seqlab.generate(model, [[1], [1, 2]], max_new_tokens=2)
    with pytest.raises(UnknownNameError, match="valid samplers"):
        seqlab.generate(model, [[1]], max_new_tokens=2, sampler="nope")
