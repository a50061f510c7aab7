"""sort, copy and reverse are sequence-to-sequence tasks: each row is its unscored source,
then its scored target to the row's end (padding aside), so every objective conditions on
the source and scores the target only (the kit's `source_kept` proves each objective keeps
unscored positions clean and unscored); every objective trains and evaluates on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.model import build_model
from seqlab.objectives import build_objective
from seqlab.registry import OBJECTIVES

SEQ2SEQ = {
    "sort": {"min_items": 2, "max_items": 5, "num_values": 12},
    "copy": {"min_len": 2, "max_len": 5, "test_max_len": 7, "alphabet_size": 6},
    "reverse": {"min_len": 2, "max_len": 5, "test_max_len": 7, "alphabet_size": 6},
}


def make(name: str):
    options = {**SEQ2SEQ[name], "eval_examples": 8}
    return build_task(ExperimentConfig(task=TaskConfig(name=name, options=options)))


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_rows_are_a_source_then_its_target_to_the_end(name):
    task = make(name)
    batches = [task.batch("train", 0, 16, seed=0), *task.eval_batches("test", 8)]
    for batch in batches:
        for tokens, mask in zip(batch.tokens.numpy(), batch.mask.numpy(), strict=True):
            length = int(np.flatnonzero(tokens)[-1]) + 1
            scored = np.flatnonzero(mask)
            assert scored.tolist() == list(range(scored[0], length)) and scored[0] > 1


@pytest.mark.parametrize("objective", OBJECTIVES.names())
@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_every_objective_trains_and_scores_a_seq2seq_task(name, objective):
    task = make(name)
    bound = build_objective(objective).bind(task.vocab_size)
    torch.manual_seed(0)
    config = ModelConfig(
        mixer="attention",
        d_model=16,
        n_layers=1,
        n_heads=2,
        vocab_size=bound.model_vocab_size(task.vocab_size),
    )
    model = build_model(config)
    loss, _ = bound.training_loss(model, task.batch("train", 0, 4, seed=0))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    metrics = task.evaluate(model, bound, split="test", batch_size=8)
    assert math.isfinite(metrics["nll"]) and 0 <= metrics["exact_match"] <= 1
