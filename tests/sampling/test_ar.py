import pytest
import torch

import seqlab
from seqlab.errors import ConfigError, ShapeError, UnknownNameError
from seqlab.sampling import Generation
from seqlab.sampling.base import shares
from tests.sampling.helpers import PROMPTS, chi2_statistic, row
from tests.sampling.helpers import tiny as tiny_model


def tiny():
    return tiny_model(std=0.02)


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
    assert out.lengths.tolist() == [9, 9]


def test_sampling_is_seeded_and_keeps_prompt():
    model = tiny()
    a = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=1)
    b = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=1)
    c = seqlab.generate(model, [[1, 2]], max_new_tokens=10, sampler="sample", seed=2)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens[0, :2].tolist() == [1, 2] and a.tokens.shape == (1, 12)
    assert int(a.tokens.max()) < 20


@pytest.mark.statistical
def test_sampling_follows_model_distribution():
    """Empirical next-token frequencies match softmax(logits) (χ² over 4000 draws)."""
    model = tiny()
    prompt = torch.tensor([[3, 4]])
    with torch.no_grad():
        probs = model(prompt)[0][0, -1].softmax(-1).double()
    draws = seqlab.generate(
        model, prompt.repeat(4000, 1), max_new_tokens=1, sampler="sample", seed=0
    ).tokens[:, -1]
    counts = torch.bincount(draws, minlength=20).double()
    chi2, limit = chi2_statistic(counts, probs * 4000)
    assert chi2 < limit


def test_bad_prompt_and_sampler_are_explained():
    model = tiny()
    with pytest.raises(ShapeError, match="non-empty"):
        seqlab.generate(model, [[1], []], max_new_tokens=2)
    with pytest.raises(UnknownNameError, match="valid samplers"):
        seqlab.generate(model, [[1]], max_new_tokens=2, sampler="nope")
    with pytest.raises(ConfigError, match="valid options"):
        seqlab.generate(model, [[1]], max_new_tokens=2, sampler="greedy", top_k=3)
    with pytest.raises(ConfigError, match="one seed per prompt"):
        seqlab.generate(model, [[1], [2]], max_new_tokens=2, sampler="sample", seed=[1])


@pytest.mark.parametrize("mixer", ["attention", "mamba", "gru"])
def test_ragged_batch_rows_equal_prompts_decoded_alone(mixer):
    model = tiny_model(mixer)
    batch = seqlab.generate(model, PROMPTS, max_new_tokens=8)
    assert batch.tokens.shape == (4, 13) and batch.lengths.tolist() == [12, 9, 10, 13]
    for i, prompt in enumerate(PROMPTS):
        alone = seqlab.generate(model, [prompt], max_new_tokens=8)
        assert row(batch, i) == alone.tokens[0].tolist()
    assert (batch.tokens[1, 9:] == 0).all()  # padded with pad_id 0


@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_ragged_seeded_sampling_rows_equal_prompts_sampled_alone(mixer):
    model = tiny_model(mixer)
    seeds = [11, 12, 13, 14]
    options = dict(sampler="sample", temperature=0.8, top_k=10, repetition_penalty=1.3)
    batch = seqlab.generate(model, PROMPTS, max_new_tokens=8, seed=seeds, **options)
    for i, prompt in enumerate(PROMPTS):
        alone = seqlab.generate(model, [prompt], max_new_tokens=8, seed=seeds[i], **options)
        assert row(batch, i) == alone.tokens[0].tolist()


def test_stop_tokens_end_rows_separately():
    model = tiny_model()
    free = seqlab.generate(model, PROMPTS, max_new_tokens=8)
    stop = free.tokens[0, 6].item()  # the third new token of row 0
    out = seqlab.generate(model, PROMPTS, max_new_tokens=8, stop_tokens=[stop], pad_id=-1)
    for i, prompt in enumerate(PROMPTS):
        new = row(free, i)[len(prompt) :]
        expected = new[: new.index(stop) + 1] if stop in new else new
        assert row(out, i) == prompt + expected
        assert (out.tokens[i, int(out.lengths[i]) :] == -1).all()
    assert (out.lengths < free.lengths).any()


def test_stop_strings_use_decode():
    model = tiny_model()
    free = seqlab.generate(model, [[1, 2]], max_new_tokens=8).tokens[0, 2:].tolist()
    text = "".join(chr(65 + t) for t in free)
    out = seqlab.generate(
        model,
        [[1, 2]],
        max_new_tokens=8,
        stop_strings=[text[3:5]],
        decode_fn=lambda ids: "".join(chr(65 + t) for t in ids),
    )
    assert out.tokens[0, 2:].tolist() == free[: text.index(text[3:5]) + 2]
    with pytest.raises(ConfigError, match="decode_fn"):
        seqlab.generate(model, [[1]], max_new_tokens=2, stop_strings=["a"])


def test_stream_receives_every_new_token_in_order():
    model = tiny_model()
    seen = [[] for _ in PROMPTS]

    def stream(new):
        for i, tokens in enumerate(new):
            seen[i].extend(tokens)

    out = seqlab.generate(model, PROMPTS, max_new_tokens=5, sampler="sample", seed=3, stream=stream)
    assert seen == [row(out, i)[len(p) :] for i, p in enumerate(PROMPTS)]


def test_user_processor_changes_decoding():
    model = tiny_model()
    free = seqlab.generate(model, [[1, 2]], max_new_tokens=4).tokens[0, 2:].tolist()

    def ban(input_ids, scores):
        return scores.index_fill(-1, torch.tensor(free), -torch.inf)

    out = seqlab.generate(model, [[1, 2]], max_new_tokens=4, processors=[ban])
    assert not set(out.tokens[0, 2:].tolist()) & set(free)


def test_ragged_prompts_are_refused_by_non_autoregressive_samplers():
    from seqlab.registry import SAMPLERS

    others = [e.name for e in SAMPLERS.entries() if e.declared("paradigm") != "ar"]
    assert others, "the diffusion samplers are registered"
    with pytest.raises(ShapeError, match="one length"):
        seqlab.generate(tiny(), [[1], [1, 2]], max_new_tokens=2, sampler=others[0])


def test_shared_options_are_flat_keywords_of_each_sampler():
    """Samplers take their share of `SamplingOptions` as flat keyword options, validated and
    listed by the registry like their own."""
    from seqlab.registry import SAMPLERS

    greedy, speculative = SAMPLERS.get("greedy"), SAMPLERS.get("speculative")
    assert "top_k" not in greedy.options() and greedy.options()["pad_id"] == 0
    assert list(speculative.options())[:3] == ["draft_model", "num_draft_tokens", "do_sample"]
    assert SAMPLERS.get("confidence").options()["temperature"] == 0.0
    assert "steps" not in SAMPLERS.get("confidence").options()
    lines = speculative.option_lines()
    assert "draft_model: Model (required)" in lines and "temperature: float = 1.0" in lines


def test_a_new_sampler_is_one_function():
    """Written anywhere with `@shares`, named by import path: options validated and passed."""
    with pytest.raises(ConfigError, match="valid options: bonus, pad_id"):
        seqlab.generate(tiny(), [[1]], max_new_tokens=2, sampler=f"{__name__}:_echo", top_k=1)
    out = seqlab.generate(tiny(), [[1, 2]], max_new_tokens=2, sampler=f"{__name__}:_echo", bonus=3)
    assert out.tokens.tolist() == [[1, 2, 3, 3]]


@shares("pad_id")
def _echo(model, prompt, max_new_tokens, options, *, bonus: int = 0):
    tail = torch.full((prompt.shape[0], max_new_tokens), bonus + options.pad_id)
    return Generation(torch.cat([prompt, tail], dim=1), 0, 0.0)
