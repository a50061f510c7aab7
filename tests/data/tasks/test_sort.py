"""Sort: `sorted` reproduces every answer."""

import numpy as np
import pytest

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task


def make(name: str, **options):
    options.setdefault("eval_examples", 32)
    return build_task(ExperimentConfig(task=TaskConfig(name=name, options=options)))


def rows(task, split):
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(4)]
    else:
        batches = list(task.eval_batches(split, 32))
    return [(t.numpy(), m.numpy()) for b in batches for t, m in zip(b.tokens, b.mask, strict=True)]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_sort_outputs_the_sorted_set(split):
    task = make("sort", min_items=2, max_items=16, num_values=64)
    assert task.vocab_size == 66 and task.seq_len == 33
    for tokens, mask in rows(task, split):
        row = tokens[tokens != 0].tolist()
        separator = row.index(1)
        x = row[:separator]
        assert 2 <= len(x) <= 16 and len(set(x)) == len(x)
        assert all(2 <= v < 66 for v in x)
        assert row[separator + 1 :] == sorted(x)
        assert np.flatnonzero(mask).tolist() == list(range(separator + 1, len(row)))
