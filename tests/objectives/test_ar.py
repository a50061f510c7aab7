import math

import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.objectives import Batch, build_objective


def tiny():
    return seqlab.build_model(ModelConfig(d_model=32, n_layers=1, n_heads=4, vocab_size=11))


def test_nll_equals_sum_of_log_probs_by_chain_rule():
    model = tiny().double()
    tokens = torch.randint(0, 11, (2, 7))
    result = build_objective("ar").nll(model, Batch(tokens))
    with torch.no_grad():
        logp = model(tokens[:, :-1])[0].log_softmax(-1)
    expected = -logp.gather(-1, tokens[:, 1:, None]).sum()
    assert math.isclose(result.nats, float(expected), rel_tol=1e-12)
    assert result.tokens == 12 and not result.bound


def test_masked_positions_are_ignored():
    model = tiny()
    objective = build_objective("ar")
    tokens = torch.randint(0, 11, (2, 7))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 4:] = True
    full = objective.nll(model, Batch(tokens, mask))
    assert full.tokens == 6
    loss, _ = objective.loss(model, Batch(tokens, mask))
    assert math.isclose(loss.item(), full.per_token, rel_tol=1e-5)


def test_untrained_model_is_near_uniform():
    model = tiny()
    result = build_objective("ar").nll(model, Batch(torch.randint(0, 11, (4, 30))))
    assert abs(result.per_token - math.log(11)) < 0.1
