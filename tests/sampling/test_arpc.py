"""BlockGen's AR-informed predictor-corrector (`arpc`): the kit, its reduction to ancestral
sampling, the KL scoring that re-masks exactly the disagreeing position, and NFE."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective
from seqlab.registry import SAMPLERS
from seqlab.sampling import generate
from seqlab.sampling.arpc import worst
from seqlab.sampling.diffusion import kl_divergence
from seqlab.testing import check_sampler

VOCAB = 7


def blockgen(block_size: int = 4, sizes: tuple[int, ...] = (1, 4), **options):
    return build_objective(
        "block_diffusion", VOCAB, block_size=block_size, block_sizes=list(sizes), **options
    )


def tiny(objective, mixer: str = "attention"):
    config = ModelConfig(
        mixer=mixer, d_model=32, n_layers=1, n_heads=4, vocab_size=objective.model_vocab_size(VOCAB)
    )
    torch.manual_seed(0)
    return seqlab.build_model(config).double()


def test_arpc_is_a_registered_diffusion_sampler_that_passes_the_kit():
    assert SAMPLERS.get("arpc").declared("paradigm") == "diffusion"
    objective = build_objective("block_diffusion", block_size=3, block_sizes=[1, 3])
    assert check_sampler("arpc", objective=objective).ok
    assert check_sampler(
        "arpc", objective=objective, corrector_steps=2, remask=2, block_size=2, temperature=0.5
    ).ok


@pytest.mark.parametrize("shift", [False, True])
def test_without_corrector_steps_arpc_is_ancestral(shift):
    objective = blockgen(shift=shift)
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (3, 3), generator=torch.Generator().manual_seed(1))
    options = {"max_new_tokens": 9, "objective": objective, "steps": 3, "seed": 4}
    plain = generate(model, prompt, sampler="ancestral", **options)
    corrected = generate(model, prompt, sampler="arpc", corrector_steps=0, **options)
    assert torch.equal(plain.tokens, corrected.tokens)
    assert plain.nfe == corrected.nfe
    changed = generate(model, prompt, sampler="arpc", corrector_steps=2, **options)
    assert changed.nfe > plain.nfe


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_nfe_counts_every_model_call(cache, mixer):
    objective = blockgen()
    model = tiny(objective, mixer)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    out = generate(
        model,
        [[1, 2, 3]],
        max_new_tokens=7,
        sampler="arpc",
        objective=objective,
        corrector_steps=2,
        remask=2,
        steps=2,
        seed=0,
        cache=cache,
    )
    hook.remove()
    assert out.nfe == len(calls)
    assert ((out.tokens >= 0) & (out.tokens < VOCAB)).all()


class Stub(nn.Module):
    """x̂_0 a near point mass on token i mod V at position i; the AR pass (block size 1, the
    vectorised pass that gives `positions`) agrees except at position `odd`. Records its
    inputs (None for AR passes)."""

    def __init__(self, odd: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=VOCAB + 1, window=None)
        self.weight = nn.Parameter(torch.zeros(()))
        self.odd, self.inputs = odd, []

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def forward(
        self, tokens: Tensor, state=None, *, layout=None, positions=None, input_embeddings=None
    ) -> tuple[Tensor, None]:
        length = tokens.shape[1] if positions is None else tokens.shape[1] // 2
        target = torch.arange(length) % VOCAB
        if positions is not None:
            target[self.odd] = (self.odd + 1) % VOCAB
            target = target.repeat(2)
        self.inputs.append(None if positions is not None else tokens.clone())
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], VOCAB + 1, dtype=torch.float64)
        logits[:, torch.arange(tokens.shape[1]), target] = 40.0
        return logits, None


def test_the_disagreeing_position_and_only_it_is_remasked():
    """Prompt of 2, one block of 4: the AR prediction disagrees with the diffusion one at
    position 3 only, so the corrector's re-denoising pass reads a mask there and nowhere
    else; the re-predicted block is the diffusion prediction again."""
    objective = blockgen()
    model = Stub(odd=3)
    out = generate(
        model,
        [[0, 1]],
        max_new_tokens=2,
        sampler="arpc",
        objective=objective,
        corrector_steps=1,
        steps=2,
        seed=0,
        cache=False,
    )
    assert out.tokens.tolist() == [[0, 1, 2, 3]]
    ar = model.inputs.index(None)
    assert model.inputs.count(None) == 1
    after = model.inputs[ar + 1]
    assert (after == objective.mask_id).nonzero()[:, 1].tolist() == [3]
    assert out.nfe == len(model.inputs)


def test_worst_takes_the_k_highest_free_scores():
    scores = torch.tensor([[0.5, 3.0, 2.0, 9.0], [1.0, 1.0, 0.0, 0.0]])
    free = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert worst(scores, free, 2).tolist() == [
        [False, True, True, False],
        [True, True, False, False],
    ]
    assert worst(scores, free, 9).equal(free)


def test_kl_divergence():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64)
    assert torch.allclose(kl_divergence(p, q), torch.log(torch.tensor([2.0], dtype=torch.float64)))
    assert float(kl_divergence(p, p)) == 0.0


@pytest.mark.parametrize(
    "objective, match",
    [
        (build_objective("masked_diffusion", VOCAB), "block_diffusion"),
        (build_objective("block_diffusion", VOCAB, block_size=4), "block size 1"),
        (blockgen(noise="uniform"), "absorbing"),
    ],
)
def test_arpc_refuses_what_cannot_give_ar_predictions(objective, match):
    with pytest.raises(ConfigError, match=match):
        generate(tiny(objective), [[1]], max_new_tokens=2, sampler="arpc", objective=objective)


@pytest.mark.parametrize("option, value", [("corrector_steps", -1), ("remask", 0)])
def test_arpc_option_ranges(option, value):
    objective = blockgen()
    with pytest.raises(ConfigError, match=option):
        generate(
            tiny(objective),
            [[1]],
            max_new_tokens=2,
            sampler="arpc",
            objective=objective,
            **{option: value},
        )
