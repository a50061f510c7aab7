"""The Chomsky-hierarchy tasks: a direct computation of each transduction reproduces every
answer; test strings are longer than training strings."""

import numpy as np
import pytest

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task


def solve(kind: str, x: list[int]) -> list[int]:
    """The expected answer tokens for input tokens `x` (symbols from id 2)."""
    if kind == "even_pairs":
        pairs = sum(1 for i in range(len(x) - 1) if x[i] != x[i + 1])
        return [5 if pairs % 2 == 0 else 4]
    if kind == "cycle_navigation":
        position = 0
        for move in x:
            position = (position + {2: 0, 3: 1, 4: -1}[move]) % 5
        return [5 + position]
    if kind == "reverse_string":
        return x[::-1]
    if kind == "duplicate_string":
        return x + x
    return sorted(x)


VOCAB = {
    "even_pairs": 6,
    "cycle_navigation": 10,
    "reverse_string": 4,
    "duplicate_string": 4,
    "bucket_sort": 7,
}


@pytest.mark.parametrize("split", ["train", "validation", "test"])
@pytest.mark.parametrize("kind", list(VOCAB))
def test_answers_match_a_direct_computation(kind, split):
    options = {"kind": kind, "max_len": 12, "test_max_len": 30, "eval_examples": 32}
    task = build_task(ExperimentConfig(task=TaskConfig(name="formal", options=options)))
    assert task.vocab_size == VOCAB[kind]
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(4)]
    else:
        batches = list(task.eval_batches(split, 32))
    lengths = []
    for batch in batches:
        for tokens, mask in zip(batch.tokens.numpy(), batch.mask.numpy(), strict=True):
            row = tokens[tokens != 0].tolist()
            separator = row.index(1)
            x, y = row[:separator], row[separator + 1 :]
            assert y == solve(kind, x)
            assert np.flatnonzero(mask).tolist() == list(range(separator + 1, len(row)))
            lengths.append(len(x))
    if split == "test":
        assert min(lengths) > 12 and max(lengths) <= 30
    else:
        assert min(lengths) >= 1 and max(lengths) <= 12
    assert task.seq_len >= 31 + len(solve(kind, [2] * 30))
