"""Hugging Face's `generate` keywords as aliases: each equals the call in seqlab's own names."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    EosTokenCriteria,
    LogitsProcessorList,
    MaxLengthCriteria,
    PreTrainedTokenizerFast,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
    TextStreamer,
)

import seqlab
from seqlab.errors import ConfigError
from tests.sampling.helpers import PROMPTS, noisy_copy, tiny

VOCAB = 20


@pytest.fixture(scope="module")
def model():
    return tiny(std=0.5)


def same(a: seqlab.Generation, b: seqlab.Generation) -> None:
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.lengths, b.lengths)
    for field in ("sequences", "scores"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


def gen(model, prompt=PROMPTS, max_new_tokens=6, **options):
    return seqlab.generate(model, prompt, max_new_tokens=max_new_tokens, **options)


@pytest.mark.parametrize(
    ("hf", "own"),
    [
        ({"do_sample": False}, {"sampler": "greedy"}),
        ({}, {"sampler": "greedy"}),
        (
            {"do_sample": True, "seed": 3, "temperature": 0.8, "top_k": 5, "top_p": 0.9},
            {"sampler": "sample", "seed": 3, "temperature": 0.8, "top_k": 5, "top_p": 0.9},
        ),
        ({"do_sample": False, "temperature": 1.0, "top_p": 1.0}, {"sampler": "greedy"}),
        ({"num_beams": 3}, {"sampler": "beam", "num_beams": 3}),
        (
            {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0},
            {"sampler": "diverse_beam", "num_beams": 4, "num_groups": 2, "diversity_penalty": 1.0},
        ),
        ({"pad_token_id": 7}, {"sampler": "greedy", "pad_id": 7}),
        ({"eos_token_id": 3}, {"sampler": "greedy", "stop_tokens": [3], "pad_id": 3}),
        (
            {"eos_token_id": [3, 4], "pad_token_id": 0},
            {"sampler": "greedy", "stop_tokens": [3, 4], "pad_id": 0},
        ),
        (
            {"do_sample": True, "seed": 1, "eos_token_id": 3},
            {"sampler": "sample", "seed": 1, "stop_tokens": [3], "pad_id": 3},
        ),
        (
            {"num_beams": 3, "eos_token_id": 3},
            {"sampler": "beam", "num_beams": 3, "stop_tokens": [3], "pad_id": 3},
        ),
        # the same value given both ways, in different spellings, agrees
        ({"eos_token_id": 3, "stop_tokens": 3}, {"stop_tokens": [3], "pad_id": 3}),
        (
            {"eos_token_id": torch.tensor([3]), "stop_tokens": (3,)},
            {"stop_tokens": [3], "pad_id": 3},
        ),
    ],
)
def test_alias_equals_seqlab_names(model, hf, own):
    same(gen(model, **hf), gen(model, **own))


def test_the_aliases_change_the_output(model):
    """The cases above compare something: the aliased options do change decoding here."""
    greedy = gen(model)
    assert not torch.equal(greedy.tokens, gen(model, do_sample=True, seed=3).tokens)
    assert not torch.equal(greedy.tokens, gen(model, eos_token_id=3).tokens)
    beams = gen(model, num_beams=4, num_beam_groups=2, diversity_penalty=1.0)
    assert not torch.equal(beams.sequences, gen(model, num_beams=4).sequences)


@pytest.mark.parametrize("do_sample", [False, True])
def test_assistant_model_is_speculative_decoding(model, do_sample):
    draft = noisy_copy(model, 0.3)
    hf = gen(
        model, assistant_model=draft, num_assistant_tokens=3, do_sample=do_sample, seed=[1, 2, 3, 4]
    )
    own = gen(
        model,
        sampler="speculative",
        draft_model=draft,
        num_draft_tokens=3,
        do_sample=do_sample,
        seed=[1, 2, 3, 4],
    )
    same(hf, own)
    assert hf.acceptance is not None
    if not do_sample:
        same(hf, gen(model))


def test_logits_processor_is_processors(model):
    hf = gen(model, logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(3.0)]))
    same(hf, gen(model, processors=[RepetitionPenaltyLogitsProcessor(3.0)]))
    # Hugging Face's repetition penalty is CTRL's, seqlab's own too
    same(hf, gen(model, repetition_penalty=3.0))
    assert not torch.equal(hf.tokens, gen(model).tokens)


def test_stopping_criteria_stop_like_seqlab(model):
    free = gen(model, prompt=[PROMPTS[0]], max_new_tokens=8)
    token = int(free.tokens[0, len(PROMPTS[0]) + 2])  # the third new token
    by_eos = gen(
        model,
        prompt=[PROMPTS[0]],
        max_new_tokens=8,
        stopping_criteria=StoppingCriteriaList([EosTokenCriteria(token)]),
    )
    same(by_eos, gen(model, prompt=[PROMPTS[0]], max_new_tokens=8, stop_tokens=[token]))
    assert int(by_eos.lengths[0]) < int(free.lengths[0])
    by_length = gen(
        model,
        prompt=[PROMPTS[0]],
        max_new_tokens=8,
        stopping_criteria=[MaxLengthCriteria(max_length=len(PROMPTS[0]) + 3)],
    )
    same(by_length, gen(model, prompt=[PROMPTS[0]], max_new_tokens=3))
    # a plain callable returning a bool, per row of a ragged batch
    odd = gen(model, stopping_criteria=[lambda ids, scores: int(ids[0, -1]) % 2 == 1])
    mine = gen(model, stop_when=[lambda ids: int(ids[-1]) % 2 == 1])
    same(odd, mine)


def tiny_tokenizer(tmp_path) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))


def test_text_streamer_prints_the_decoded_text(model, tmp_path, capsys):
    tokenizer = tiny_tokenizer(tmp_path)
    out = gen(model, prompt=[PROMPTS[0]], streamer=TextStreamer(tokenizer))
    printed = capsys.readouterr().out
    assert printed == tokenizer.decode(out.tokens[0].tolist()) + "\n"
    assert printed.startswith("w1 w2 w3 w4 ")
    prompt_skipped = gen(
        model, prompt=[PROMPTS[0]], streamer=TextStreamer(tokenizer, skip_prompt=True)
    )
    new = prompt_skipped.tokens[0, len(PROMPTS[0]) :].tolist()
    assert capsys.readouterr().out == tokenizer.decode(new) + "\n"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value.tolist())

    def end(self) -> None:
        self.calls.append("end")


def test_streamer_gets_the_prompt_then_each_token(model):
    recorder = Recorder()
    out = gen(model, prompt=[PROMPTS[3]], streamer=recorder, eos_token_id=5, max_new_tokens=5)
    new = out.tokens[0, len(PROMPTS[3]) : int(out.lengths[0])].tolist()
    assert recorder.calls == [[PROMPTS[3]], *[[t] for t in new], "end"]
    drafted = Recorder()
    out = gen(model, prompt=[PROMPTS[0]], streamer=drafted, assistant_model=model)
    assert drafted.calls[0] == [PROMPTS[0]] and drafted.calls[-1] == "end"
    streamed = [t for call in drafted.calls[1:-1] for t in call]
    assert streamed == out.tokens[0, len(PROMPTS[0]) :].tolist()
    assert any(len(call) > 1 for call in drafted.calls[1:-1])  # whole accepted drafts


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"logits_processor": [abs], "processors": [min]}, "disagree"),
        ({"eos_token_id": 3, "stop_tokens": [4]}, "disagree"),
        ({"do_sample": True, "sampler": "greedy"}, "asks for sampler 'sample'"),
        ({"num_beams": 2, "sampler": "sample"}, "asks for sampler 'beam'"),
        ({"do_sample": True, "num_beams": 2}, "beam sampling"),
        ({"do_sample": False, "temperature": 0.7}, "needs do_sample=True"),
        ({"num_beams": 2, "streamer": Recorder()}, "streamer= (seqlab's stream)"),
        ({"num_beams": 2, "stopping_criteria": [abs]}, "is not an option of sampler 'beam'"),
        ({"num_assistant_tokens": 3}, "num_assistant_tokens"),
        ({"streamer": Recorder()}, "one prompt"),
        ({"streamer": object()}, "put(tokens) and end()"),
        ({"eos_token_id": "x"}, "eos_token_id"),
        ({"eos_token_id": []}, "eos_token_id must name at least one token id"),
        ({"eos_token_id": torch.tensor([])}, "eos_token_id must name at least one token id"),
    ],
)
def test_clashes_and_unsupported_combinations(model, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        gen(model, **options)
    assert "\n" not in str(err.value)


def test_streamer_ends_when_sampling_raises(model):
    recorder = Recorder()
    with pytest.raises(ConfigError, match="one seed per prompt"):
        gen(model, prompt=[PROMPTS[0]], streamer=recorder, do_sample=True, seed=[1, 2])
    assert recorder.calls == [[PROMPTS[0]], "end"]
