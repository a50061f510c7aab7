"""Sampling runs in eval mode and gives every model its training mode back."""

import pytest
import torch

import seqlab
from seqlab.errors import ConfigError
from seqlab.sampling import eval_mode
from tests.sampling.helpers import noisy_copy, tiny


def modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("sampler", ["greedy", "sample", "beam", "ancestral"])
def test_generate_samples_in_eval_mode_and_restores_training_mode(sampler):
    model = tiny().train()
    next(model.children()).eval()  # a frozen part stays in eval mode
    before = modes(model)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    seed = {"seed": 0} if sampler in ("sample", "ancestral") else {}
    seqlab.generate(model, [[1, 2, 3]], max_new_tokens=3, sampler=sampler, **seed)
    assert seen and not any(seen)
    assert modes(model) == before  # each submodule's own mode, not one mode for all


def test_draft_model_mode_is_restored_too():
    model = tiny().train()
    draft = noisy_copy(model, 0.05).train()
    seqlab.generate(model, [[1, 2]], max_new_tokens=4, sampler="speculative", draft_model=draft)
    assert model.training and draft.training


def test_training_mode_is_restored_when_sampling_raises():
    model = tiny().train()
    with pytest.raises(ConfigError, match="one seed per prompt"):
        seqlab.generate(model, [[1], [2]], max_new_tokens=2, sampler="sample", seed=[1])
    assert all(modes(model))
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert all(modes(model))


def test_samplers_called_directly_restore_the_mode():
    from seqlab.registry import SAMPLERS

    model = tiny().train()
    out = SAMPLERS.get("greedy").target(model, torch.tensor([[1, 2]]), 3)
    assert out.tokens.shape == (1, 5) and model.training
