import itertools

import pytest
import torch

import seqlab
from seqlab.errors import ConfigError
from tests.sampling.helpers import PROMPTS, row, tiny


@torch.no_grad()
def sequence_logprob(model, prompt, new):
    tokens = torch.tensor([prompt + new])
    logp = model(tokens)[0][0].double().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(new))


@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_wide_beam_finds_exact_n_best(mixer):
    """With num_beams >= V^(T-1) beam search is exhaustive: its n-best list equals the
    brute-force ranking of every continuation, scores included."""
    model = tiny(mixer, vocab=5)
    prompt = [1, 2]
    out = seqlab.generate(
        model,
        [prompt],
        max_new_tokens=3,
        sampler="beam",
        num_beams=25,
        num_return_sequences=5,
        length_penalty=0.0,
    )
    seqs = torch.tensor(list(itertools.product(range(5), repeat=3)))
    with torch.no_grad():
        logp = model(torch.cat([torch.tensor([prompt]).expand(125, -1), seqs], 1))[0]
    logp = logp.double().log_softmax(-1)[:, 1:4].gather(-1, seqs[..., None]).sum((1, 2))
    ranked = sorted(zip(logp.tolist(), seqs.tolist(), strict=True), reverse=True)[:5]
    assert out.sequences.shape == (1, 5, 5)
    assert [s[2:] for s in out.sequences[0].tolist()] == [s for _, s in ranked]
    expected = torch.tensor([v for v, _ in ranked], dtype=torch.float64)
    torch.testing.assert_close(out.scores[0], expected, rtol=0, atol=1e-5)
    assert out.tokens[0].tolist() == out.sequences[0, 0].tolist()


@pytest.mark.parametrize("mixer", ["attention", "mamba"])
def test_beam_scores_are_model_logprobs_after_state_reordering(mixer):
    model = tiny(mixer)
    out = seqlab.generate(
        model, PROMPTS[:2], max_new_tokens=4, sampler="beam", num_beams=3, length_penalty=1.0
    )
    for i, prompt in enumerate(PROMPTS[:2]):
        for j in range(3):
            new = out.sequences[i, j].tolist()[len(prompt) : len(prompt) + 4]
            assert out.scores[i, j].item() == pytest.approx(
                sequence_logprob(model, prompt, new) / 4, abs=1e-5
            )
        assert out.scores[i].tolist() == sorted(out.scores[i].tolist(), reverse=True)


def test_one_beam_is_greedy_and_ragged_rows_equal_alone():
    model = tiny()
    greedy = seqlab.generate(model, PROMPTS, max_new_tokens=5)
    one = seqlab.generate(model, PROMPTS, max_new_tokens=5, sampler="beam", num_beams=1)
    assert torch.equal(one.tokens, greedy.tokens)
    batch = seqlab.generate(model, PROMPTS, max_new_tokens=5, sampler="beam", num_beams=3)
    for i, prompt in enumerate(PROMPTS):
        alone = seqlab.generate(model, [prompt], max_new_tokens=5, sampler="beam", num_beams=3)
        assert row(batch, i) == alone.tokens[0].tolist()
        torch.testing.assert_close(batch.scores[i], alone.scores[0], rtol=0, atol=1e-5)


def test_stop_token_finishes_hypotheses_with_length_penalty():
    model = tiny()
    free = seqlab.generate(model, [[1, 2]], max_new_tokens=6, sampler="beam", num_beams=4)
    stop = free.tokens[0, 3].item()
    out = seqlab.generate(
        model,
        [[1, 2]],
        max_new_tokens=6,
        sampler="beam",
        num_beams=4,
        stop_tokens=[stop],
        length_penalty=2.0,
        pad_id=-1,
    )
    for seq, score in zip(out.sequences[0].tolist(), out.scores[0].tolist(), strict=True):
        new = [t for t in seq[2:] if t != -1]
        assert stop not in new[:-1]
        assert new[-1] == stop or len(new) == 6
        assert score == pytest.approx(
            sequence_logprob(model, [1, 2], new) / len(new) ** 2, abs=1e-5
        )


def test_diverse_beam_with_one_group_is_beam_search():
    model = tiny()
    kwargs = dict(max_new_tokens=5, num_beams=4)
    plain = seqlab.generate(model, PROMPTS, sampler="beam", **kwargs)
    one = seqlab.generate(
        model, PROMPTS, sampler="diverse_beam", num_groups=1, diversity_penalty=3.0, **kwargs
    )
    assert torch.equal(plain.sequences, one.sequences)


def test_diverse_beam_without_penalty_repeats_the_same_group():
    model = tiny()
    narrow = seqlab.generate(model, PROMPTS[:1], max_new_tokens=5, sampler="beam", num_beams=2)
    out = seqlab.generate(
        model,
        PROMPTS[:1],
        max_new_tokens=5,
        sampler="diverse_beam",
        num_beams=6,
        num_groups=3,
        diversity_penalty=0.0,
    )
    seqs = out.sequences[0].tolist()
    for s in narrow.sequences[0].tolist():
        assert seqs.count(s) == 3


def test_diversity_penalty_makes_groups_start_differently():
    model = tiny()
    out = seqlab.generate(
        model,
        PROMPTS,
        max_new_tokens=4,
        sampler="diverse_beam",
        num_beams=4,
        num_groups=4,
        diversity_penalty=100.0,
    )
    for i, prompt in enumerate(PROMPTS):
        first = out.sequences[i, :, len(prompt)].tolist()
        assert len(set(first)) == 4


def test_bad_beam_options_are_explained():
    model = tiny()
    with pytest.raises(ConfigError, match="multiple of num_groups"):
        seqlab.generate(
            model, [[1]], max_new_tokens=2, sampler="diverse_beam", num_beams=3, num_groups=2
        )
