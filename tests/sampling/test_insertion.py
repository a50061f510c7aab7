import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.registry import SAMPLERS
from seqlab.sampling import check_paradigm
from seqlab.testing import check_sampler


def tiny(seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=12, init_std=0.3)
    return seqlab.build_model(config)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "top_p": 0.9}, {"top_k": 3}])
def test_insertion_passes_the_sampler_kit(options):
    report = check_sampler("insertion", **options)
    assert report.ok, str(report)


def test_it_decodes_only_models_of_the_insertion_paradigm():
    insertion = SAMPLERS.get("insertion")
    assert insertion.declared("paradigm") == "insertion"
    check_paradigm(insertion, "insertion")
    with pytest.raises(ConfigError, match="samplers that fit it: insertion"):
        check_paradigm(SAMPLERS.get("greedy"), "insertion")
    with pytest.raises(ConfigError, match="an autoregressive objective"):
        check_paradigm(insertion, "ar")
    with pytest.raises(ConfigError, match="a diffusion objective"):
        check_paradigm(insertion, "masked_diffusion")


def test_rows_of_a_batch_decode_as_alone_and_stop_on_their_own():
    """With one seed per row, each row of the batch equals its prompt sampled alone: rows
    that stop early leave the others' draws and model calls unchanged."""
    model = tiny()
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 0, 1]]
    seeds = [3, 4, 5, 6]
    batch = seqlab.generate(model, prompts, max_new_tokens=8, sampler="insertion", seed=seeds)
    lengths = batch.lengths.tolist()
    assert all(3 <= n <= 11 for n in lengths)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        alone = seqlab.generate(model, [prompt], max_new_tokens=8, sampler="insertion", seed=[seed])
        assert batch.tokens[row, : lengths[row]].tolist() == alone.tokens[0].tolist()
        assert (batch.tokens[row, lengths[row] :] == 0).all()


def test_temperature_zero_is_greedy_and_max_new_tokens_caps_the_insertions():
    model = tiny(1)
    prompt = [[1, 2, 3], [4, 5, 6]]
    first = seqlab.generate(model, prompt, max_new_tokens=4, sampler="insertion", temperature=0)
    again = seqlab.generate(
        model, prompt, max_new_tokens=4, sampler="insertion", temperature=0, seed=9
    )
    assert torch.equal(first.tokens, again.tokens)
    assert (first.lengths <= 7).all() and first.nfe >= 1
    none = seqlab.generate(model, prompt, max_new_tokens=0, sampler="insertion")
    assert none.tokens.tolist() == prompt and none.nfe == 0
