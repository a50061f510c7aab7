"""Copy and selective copy: an independent parser reproduces every scored label."""

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
def test_copy_scores_the_copy_and_the_end_marker(split):
    task = make("copy", min_len=5, max_len=20, test_max_len=60, alphabet_size=26)
    assert task.seq_len == 123 and task.vocab_size == 30
    lengths = []
    for tokens, mask in rows(task, split):
        row = tokens[tokens != 0].tolist()
        separator = row.index(2)
        x = row[1:separator]
        assert row[0] == 1 and all(4 <= s < 30 for s in x)
        assert row == [1, *x, 2, *x, 3]
        assert np.flatnonzero(mask).tolist() == list(range(separator + 1, len(row)))
        lengths.append(len(x))
    if split == "test":
        assert min(lengths) > 20 and max(lengths) <= 60 and max(lengths) > 40
    else:
        assert min(lengths) >= 5 and max(lengths) <= 20


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_selective_copy_outputs_the_content_in_order(split):
    task = make("selective_copy", seq_len=64, num_tokens=8, alphabet_size=16)
    assert task.seq_len == 65 and task.vocab_size == 19
    for tokens, mask in rows(task, split):
        marker = int(np.flatnonzero(tokens == 2)[0])
        region = tokens[:marker]
        assert marker == 56 and set(region.tolist()) <= {1, *range(3, 19)}
        content = region[region >= 3]
        assert len(content) == 8
        assert tokens[marker + 1 :].tolist() == content.tolist()
        assert np.flatnonzero(mask).tolist() == list(range(marker + 1, 65))
