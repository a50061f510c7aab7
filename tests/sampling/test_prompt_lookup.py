import itertools

import pytest
import torch

import seqlab
from seqlab.errors import ConfigError
from seqlab.sampling.prompt_lookup import lookup
from seqlab.testing import check_sampler
from tests.sampling.helpers import chi2_statistic, row, tiny

REPETITIVE = [[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], [6, 7, 6, 7, 6], [8, 9, 10, 8, 9, 10, 8]]
DISTINCT = [[1, 2, 3, 4, 5, 6, 7, 8], [9], [10, 11, 12]]


def test_lookup_copies_what_followed_the_longest_match():
    context = torch.tensor([5, 1, 2, 3, 9, 1, 2, 7, 7, 1, 2, 3])
    # "1 2 3" occurs at 1; "2 3" and "3" too, but the longest match wins
    assert lookup(context, 4, 3, 1).tolist() == [9, 1, 2, 7]
    assert lookup(context, 2, 3, 1).tolist() == [9, 1]
    # "3" alone: the latest occurrence followed by 2 tokens is still position 3
    assert lookup(context, 2, 1, 1).tolist() == [9, 1]
    # "2" alone: the latest occurrence with 2 tokens after it (index 6), not the earliest (2)
    assert lookup(context[:-1], 2, 1, 1).tolist() == [7, 7]
    # too few tokens after every match: the earliest, which has the most
    assert lookup(torch.tensor([4, 4, 4]), 5, 1, 1).tolist() == [4, 4]
    assert lookup(torch.tensor([4, 4, 4]), 5, 3, 1).tolist() == [4]
    assert lookup(torch.tensor([1, 2, 3, 4]), 5, 3, 1).numel() == 0
    assert lookup(torch.tensor([1, 2, 3, 1]), 5, 3, 2).numel() == 0
    assert lookup(torch.tensor([1]), 5, 3, 1).numel() == 0


def repetitive_model(mixer: str) -> seqlab.model.Model:
    """A tiny model whose blocks read their input at half scale: its next token depends
    mostly on the current one, so its greedy output repeats itself (runs of one token, with
    changes the context decides) and drafts copied from it are often but not always right."""
    model = tiny(mixer)
    with torch.no_grad():
        for block in model.blocks:
            block.mixer_norm.weight.mul_(0.5)
            block.mlp_norm.weight.mul_(0.5)
    return model


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_greedy_prompt_lookup_equals_greedy(mixer):
    for model in (tiny(mixer), repetitive_model(mixer)):
        runs = ((REPETITIVE, 4, True), (REPETITIVE, 4, False), (REPETITIVE, 1, True))
        for prompts, k, adaptive in (*runs, (DISTINCT, 3, False)):
            greedy = seqlab.generate(model, prompts, max_new_tokens=16)
            out = seqlab.generate(
                model,
                prompts,
                max_new_tokens=16,
                sampler="prompt_lookup",
                num_draft_tokens=k,
                adaptive=adaptive,
            )
            assert torch.equal(out.tokens, greedy.tokens), (k, adaptive)
            assert torch.equal(out.lengths, greedy.lengths)
            assert 0 <= out.acceptance <= 1
    # on repetitive output, drafts are proposed and accepted (0.37 gla, 0.56 attention)
    greedy = seqlab.generate(model, REPETITIVE, max_new_tokens=16)
    out = seqlab.generate(model, REPETITIVE, max_new_tokens=16, sampler="prompt_lookup")
    assert out.acceptance > 0.2
    if mixer == "attention":  # a KV cache rewinds for free: fewer forward passes
        assert out.nfe < greedy.nfe and out.tokens_per_forward > 1


def test_without_repetitions_it_is_plain_greedy_decoding():
    """Nothing in prompt or output repeats a 3-gram: no drafts, one token per forward."""
    model = tiny()
    greedy = seqlab.generate(model, DISTINCT, max_new_tokens=4)
    out = seqlab.generate(
        model, DISTINCT, max_new_tokens=4, sampler="prompt_lookup", min_ngram=3, max_ngram=3
    )
    assert torch.equal(out.tokens, greedy.tokens)
    assert out.acceptance == 0 and out.nfe <= greedy.nfe + 1


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_batched_rows_equal_per_sequence_runs(mixer):
    """Rows draft and accept different numbers of tokens; each equals its prompt run alone,
    greedy and sampled (one seed per row)."""
    model = repetitive_model(mixer)
    seeds = [3, 4, 5]
    for options in ({}, {"do_sample": True, "seed": seeds, "temperature": 0.9, "top_k": 8}):
        run = {"max_new_tokens": 10, "sampler": "prompt_lookup", "num_draft_tokens": 3}
        batch = seqlab.generate(model, REPETITIVE, **run, **options)
        for i, prompt in enumerate(REPETITIVE):
            alone_options = {**options, "seed": seeds[i]} if options else options
            alone = seqlab.generate(model, [prompt], **run, **alone_options)
            assert row(batch, i) == alone.tokens[0].tolist()


@pytest.mark.statistical
@pytest.mark.parametrize(("mixer", "adaptive"), [("attention", True), ("gla", False)])
def test_sampling_keeps_the_model_distribution(mixer, adaptive):
    """χ² of 3-token continuations (V=4: 64 cells) sampled with prompt lookup against the
    model's exact joint probabilities; the repetitive prompt makes drafts that are often
    accepted and often rejected (the adaptive draft length then varies by row)."""
    vocab, n = 4, 4000
    model = tiny(mixer, vocab=vocab, std=0.5)
    prompt = [1, 2, 3, 1, 2]
    out = seqlab.generate(
        model,
        [prompt] * n,
        max_new_tokens=3,
        sampler="prompt_lookup",
        num_draft_tokens=2,
        adaptive=adaptive,
        do_sample=True,
        seed=0,
    )
    assert 0.05 < out.acceptance < 0.95
    seqs = list(itertools.product(range(vocab), repeat=3))
    with torch.no_grad():
        tokens = torch.tensor([prompt + list(s) for s in seqs])
        logp = model(tokens)[0].double().log_softmax(-1)
    p = len(prompt)
    cells = torch.tensor(seqs)
    probs = logp[:, p - 1 : p + 2].gather(-1, cells[..., None]).squeeze(-1).sum(-1).exp()
    index = (out.tokens[:, p:] * torch.tensor([16, 4, 1])).sum(-1)
    counts = torch.bincount(index, minlength=64).double()
    chi2, limit = chi2_statistic(counts, probs * n)
    assert chi2 < limit


@pytest.mark.parametrize("options", [{}, {"do_sample": True, "top_p": 0.9}])
def test_prompt_lookup_passes_the_sampler_kit(options):
    report = check_sampler("prompt_lookup", num_draft_tokens=3, **options)
    assert report.ok, str(report)


def test_ngram_bounds_are_checked():
    for bad in ({"min_ngram": 3, "max_ngram": 2}, {"min_ngram": 0}, {"num_draft_tokens": 0}):
        with pytest.raises(ConfigError):
            seqlab.generate(tiny(), [[1, 2]], max_new_tokens=2, sampler="prompt_lookup", **bad)
