import itertools

import pytest
import torch

import seqlab
from seqlab.errors import ConfigError
from tests.sampling.helpers import (
    PROMPTS,
    chi2_statistic,
    flattened_copy,
    noisy_copy,
    row,
    tiny,
)


@pytest.mark.parametrize("mixer", ["attention", "mamba", "gru"])
def test_greedy_speculative_equals_target_greedy(mixer):
    target = tiny(mixer)
    greedy = seqlab.generate(target, PROMPTS, max_new_tokens=12)
    drafts = {"itself": target, "close": noisy_copy(target, 0.05), "unrelated": tiny(mixer, seed=7)}
    rates = {}
    runs = [("itself", 3), ("close", 1), ("close", 3), ("unrelated", 3)]
    for name, k in runs:
        draft = drafts[name]
        out = seqlab.generate(
            target,
            PROMPTS,
            max_new_tokens=12,
            sampler="speculative",
            draft_model=draft,
            num_draft_tokens=k,
        )
        assert torch.equal(out.tokens, greedy.tokens), (name, k)
        assert torch.equal(out.lengths, greedy.lengths)
        rates[name] = out.acceptance
    assert rates["itself"] == 1.0
    assert 0 < rates["close"] < 1


@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_batched_speculative_rows_equal_per_sequence_runs(mixer):
    """Rows accept different numbers of drafts; each equals its prompt run alone, greedy and
    sampled (one seed per row)."""
    target = tiny(mixer)
    draft = noisy_copy(target, 0.1)
    seeds = [3, 4, 5, 6]
    for options in ({}, {"do_sample": True, "seed": seeds, "temperature": 0.9, "top_p": 0.95}):
        batch = seqlab.generate(
            target,
            PROMPTS,
            max_new_tokens=8,
            sampler="speculative",
            draft_model=draft,
            num_draft_tokens=4,
            **options,
        )
        for i, prompt in enumerate(PROMPTS):
            alone_options = {**options, "seed": seeds[i]} if options else options
            alone = seqlab.generate(
                target,
                [prompt],
                max_new_tokens=8,
                sampler="speculative",
                draft_model=draft,
                num_draft_tokens=4,
                **alone_options,
            )
            assert row(batch, i) == alone.tokens[0].tolist()


@pytest.mark.statistical
@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_speculative_sampling_preserves_target_distribution(mixer):
    """χ² of 3-token continuations (V=4: 64 cells) sampled speculatively against the target's
    exact joint probabilities, with a draft that is often rejected."""
    vocab, n = 4, 4000
    target = tiny(mixer, vocab=vocab, std=0.5)  # 11-28 of the 64 cells expect > 5 draws
    draft = flattened_copy(target, 0.2)
    prompt = [1, 2]
    out = seqlab.generate(
        target,
        [prompt] * n,
        max_new_tokens=3,
        sampler="speculative",
        draft_model=draft,
        num_draft_tokens=2,
        do_sample=True,
        seed=0,
    )
    assert 0.1 < out.acceptance < 0.9
    seqs = list(itertools.product(range(vocab), repeat=3))
    with torch.no_grad():
        tokens = torch.tensor([prompt + list(s) for s in seqs])
        logp = target(tokens)[0].double().log_softmax(-1)
    cells = torch.tensor(seqs)
    probs = logp[:, 1:4].gather(-1, cells[..., None]).squeeze(-1).sum(-1).exp()
    index = (out.tokens[:, 2:] * torch.tensor([16, 4, 1])).sum(-1)
    counts = torch.bincount(index, minlength=64).double()
    chi2, limit = chi2_statistic(counts, probs * n)
    assert chi2 < limit


def test_stop_tokens_and_stream_with_speculative():
    target = tiny()
    draft = noisy_copy(target, 0.05)
    greedy = seqlab.generate(target, PROMPTS, max_new_tokens=10, stop_tokens=[3])
    seen = [[] for _ in PROMPTS]

    def stream(new):
        for i, tokens in enumerate(new):
            seen[i].extend(tokens)

    out = seqlab.generate(
        target,
        PROMPTS,
        max_new_tokens=10,
        sampler="speculative",
        draft_model=draft,
        stop_tokens=[3],
        stream=stream,
    )
    assert torch.equal(out.tokens, greedy.tokens) and torch.equal(out.lengths, greedy.lengths)
    assert seen == [row(out, i)[len(p) :] for i, p in enumerate(PROMPTS)]


def test_draft_must_share_the_vocabulary():
    with pytest.raises(ConfigError, match="vocabulary"):
        seqlab.generate(
            tiny(), [[1]], max_new_tokens=2, sampler="speculative", draft_model=tiny(vocab=24)
        )
