"""`Objective.generate`: each paradigm's own greedy decoding of the scored positions."""

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.ar import Autoregressive
from seqlab.testing import check_objective

VOCAB = 6


def tiny(objective, n_layers=2):
    config = ModelConfig(
        mixer="attention",
        d_model=32,
        n_layers=n_layers,
        n_heads=4,
        vocab_size=objective.model_vocab_size(VOCAB),
    )
    return seqlab.build_model(config).double().eval()


def test_ar_generate_is_the_greedy_sampler_on_a_prompt_and_suffix():
    torch.manual_seed(0)
    objective = build_objective("ar", VOCAB)
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (3, 11))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 5:] = True
    predictions, scored = objective.generate(model, Batch(tokens, mask))
    greedy = seqlab.generate(model, tokens[:, :5], max_new_tokens=6, sampler="greedy")
    assert torch.equal(predictions, greedy.tokens) and torch.equal(scored, mask)


def test_ar_generate_decodes_each_scored_position_when_reached():
    """Scored positions anywhere, per row: each is the argmax given the row so far (earlier
    predictions and the batch's unscored tokens), recomputed from scratch at every step."""
    torch.manual_seed(1)
    objective = build_objective("ar", VOCAB)
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (3, 10))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, [0, 2, 3, 7]] = True  # position 0 has no prefix: never scored
    mask[1, [8, 9]] = True
    mask[2, [1, 5, 6, 9]] = True
    predictions, scored = objective.generate(model, Batch(tokens, mask))
    expected = tokens.clone()
    with torch.no_grad():
        for t in range(1, 10):
            guess = model(expected[:, :t])[0][:, -1].argmax(-1)
            expected[:, t] = torch.where(mask[:, t], guess, tokens[:, t])
    expected[:, 0] = tokens[:, 0]
    assert torch.equal(predictions, expected)
    assert not scored[:, 0].any() and torch.equal(scored[:, 1:], mask[:, 1:])


def test_masked_diffusion_with_one_scored_token_per_row_is_predict():
    torch.manual_seed(2)
    objective = build_objective("masked_diffusion", VOCAB)
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (4, 8))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([0, 3, 5, 7])] = True
    generated = objective.generate(model, Batch(tokens, mask))
    predicted = objective.predict(model, Batch(tokens, mask))
    assert torch.equal(generated[0], predicted[0]) and torch.equal(generated[1], predicted[1])


def test_block_diffusion_commits_one_token_per_call_in_the_first_block_with_masks():
    torch.manual_seed(3)
    objective = build_objective("block_diffusion", VOCAB, block_size=3)
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (2, 9))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, [1, 2, 4, 8]] = True
    mask[1, [3, 6, 7]] = True
    canvases = []
    hook = model.register_forward_pre_hook(lambda _m, args: canvases.append(args[0][:, :9]))
    predictions, _ = objective.generate(model, Batch(tokens, mask))
    hook.remove()
    canvases.append(predictions)
    assert len(canvases) == 5  # one call per token of the longest row
    block = torch.arange(9) // 3
    for before, after in zip(canvases, canvases[1:], strict=False):
        masked = before == objective.mask_id
        for row in range(2):
            changed = (before[row] != after[row]).nonzero().flatten()
            if not masked[row].any():
                assert changed.numel() == 0
                continue
            assert changed.numel() == 1 and masked[row, changed[0]]
            assert block[changed[0]] == block[masked[row]].min()


def test_any_order_generate_is_its_own_teacher_forced_prediction():
    """Each scored token is the argmax given the context and the tokens decoded before it
    (context first, then left to right): teacher-forced `predict` along that order on the
    generated row gives the generated tokens back."""
    torch.manual_seed(4)
    objective = build_objective("any_order", VOCAB, order="identity")
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (3, 8))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, [1, 4, 5]] = True
    mask[1, [0, 7]] = True
    mask[2, [2, 3, 4, 6]] = True
    predictions, _ = objective.generate(model, Batch(tokens, mask))
    reference, _ = objective.predict(model, Batch(predictions, mask))
    assert torch.equal(reference, predictions)


def test_uniform_diffusion_cannot_generate_from_masks():
    objective = build_objective("uniform_diffusion", VOCAB)
    model = tiny(objective)
    tokens = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(ConfigError, match="no mask state"):
        objective.generate(model, Batch(tokens, torch.ones_like(tokens, dtype=torch.bool)))


class TeacherForced(Autoregressive):
    """Its generate is the teacher-forced predict: it reads the true prefix."""

    def generate(self, model, batch):
        predictions, scored = self.predict(model, batch)
        return torch.where(scored, predictions, batch.tokens), scored


def test_a_teacher_forced_generate_fails_generate_blind():
    report = check_objective(TeacherForced, only=["generate_blind"], raise_on_failure=False)
    assert report.failed == ["generate_blind"], str(report)
    assert "reads the true values" in report["generate_blind"].detail
