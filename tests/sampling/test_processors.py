import math

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.sampling.processors import (
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
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
    kept = Temperature(0)(None, torch.tensor([[2.0, 4.0, 1.0, 4.0]]))
    assert torch.isfinite(kept).tolist() == [[False, True, False, True]]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature must be finite and >= 0"):
            Temperature(bad)


def test_user_processor_plugs_into_chain():
    def ban_zero(input_ids, scores):
        return scores.index_fill(-1, torch.tensor([0]), -math.inf)

    chain = sampling_processors(top_k=2) + [ban_zero]
    out = apply_processors(
        chain, torch.zeros(1, 1, dtype=torch.long), torch.tensor([[9.0, 1.0, 8.0]])
    )
    assert torch.isfinite(out).tolist() == [[False, False, True]]


def test_min_p_keeps_tokens_near_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(MinP(0.3)(None, probs.log()))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.isfinite(MinP(1.0)(None, probs.log())).sum() == 1


def test_typical_p_keeps_tokens_closest_to_the_entropy():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    entropy = -(probs * probs.log()).sum()
    gap = (-probs.log() - entropy).abs()[0]
    order = gap.argsort().tolist()
    kept = torch.isfinite(TypicalP(0.5)(None, probs.log()))[0]
    mass, expected = 0.0, set()
    for i in order:
        expected.add(i)
        mass += float(probs[0, i])
        if mass >= 0.5:
            break
    assert {i for i in range(4) if kept[i]} == expected


def test_repetition_penalty_lowers_seen_tokens_either_sign():
    scores = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    out = RepetitionPenalty(2.0)(torch.tensor([[0, 1, 1]]), scores)
    assert out.tolist() == [[1.0, -4.0, 1.0, 1.0]]


def test_sampling_processors_order_and_skips():
    chain = sampling_processors(
        0.5, top_k=3, top_p=0.9, min_p=0.1, typical_p=0.9, repetition_penalty=1.2
    )
    assert [type(p).__name__ for p in chain] == [
        "RepetitionPenalty",
        "Temperature",
        "TopK",
        "TopP",
        "MinP",
        "TypicalP",
    ]
    assert sampling_processors(1.0, None, 1.0, 0.0, 1.0, 1.0) == []
