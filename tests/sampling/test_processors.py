import math

import pytest
import torch

from seqlab.sampling.processors import (
    Temperature,
    TopK,
    TopP,
    apply_processors,
    sampling_processors,
)


def test_top_k_keeps_k_largest():
    scores = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = TopK(2)(None, scores)
    assert torch.equal(torch.isfinite(out), torch.tensor([[False, True, False, True]]))


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scores = probs.log()
    kept = torch.isfinite(TopP(0.8)(None, scores))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(TopP(0.81)(None, scores))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.isfinite(TopP(0.01)(None, scores)).sum() == 1


def test_top_p_handles_unsorted_rows_independently():
    scores = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    kept = torch.isfinite(TopP(0.6)(None, scores))
    assert kept.tolist() == [[False, True, False], [True, False, False]]


def test_temperature_scales():
    scores = torch.tensor([[2.0, 4.0]])
    assert torch.equal(Temperature(2.0)(None, scores), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError):
        Temperature(0)


def test_user_processor_plugs_into_chain():
    def ban_zero(input_ids, scores):
        return scores.index_fill(-1, torch.tensor([0]), -math.inf)

    chain = sampling_processors(top_k=2) + [ban_zero]
    out = apply_processors(chain, torch.zeros(1, 1, dtype=torch.long),
                           torch.tensor([[9.0, 1.0, 8.0]]))
    assert torch.isfinite(out).tolist() == [[False, False, True]]
