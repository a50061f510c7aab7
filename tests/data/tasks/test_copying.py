"""Copy and selective copy: an independent parser reproduces every scored label; selective
copy's token-count curriculum shapes only the training rows."""

import warnings

import numpy as np
import pytest
import torch

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError


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


def selective_copy_row(tokens, mask):
    """(content in order of appearance, region length, answers, scored positions) of a row."""
    row = tokens[tokens != 0]
    marker = int(np.flatnonzero(row == 2)[0])
    region = row[:marker]
    return region[region >= 3].tolist(), marker, row[marker + 1 :].tolist(), np.flatnonzero(mask)


def test_selective_copy_curriculum_grows_the_token_count_in_training_only():
    task = make(
        "selective_copy",
        seq_len=64,
        num_tokens=8,
        alphabet_size=16,
        curriculum_start=2,
        curriculum_steps=60,
    )
    assert [task.train_tokens(s) for s in (0, 9, 10, 30, 59, 60, 1000)] == [2, 2, 3, 5, 7, 8, 8]
    for step in (0, 30, 60, 500):
        batch = task.batch("train", step, 16, seed=0)
        count = task.train_tokens(step)
        assert batch.tokens.shape == (16, 56 + 1 + count)
        for tokens, mask in zip(batch.tokens.numpy(), batch.mask.numpy(), strict=True):
            content, marker, answers, scored = selective_copy_row(tokens, mask)
            assert marker == 56, "the region keeps its length"
            assert len(content) == count and answers == content
            assert scored.tolist() == list(range(57, 57 + count))
    for split in ("validation", "test"):
        for tokens, mask in rows(task, split):
            content, marker, answers, _ = selective_copy_row(tokens, mask)
            assert len(content) == 8 and answers == content and len(tokens) == 65


def test_selective_copy_without_a_curriculum_is_unchanged():
    plain = make("selective_copy", seq_len=32, num_tokens=4)
    off = make("selective_copy", seq_len=32, num_tokens=4, curriculum_steps=0)
    assert plain.train_tokens(0) == 4
    for step in range(3):
        a, b = plain.batch("train", step, 8, seed=1), off.batch("train", step, 8, seed=1)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "options",
    [
        {"curriculum_steps": 10},
        {"curriculum_steps": 10, "curriculum_start": 0},
        {"curriculum_steps": 10, "curriculum_start": 9},
        {"curriculum_steps": 10, "curriculum_start": 2.5},
        {"curriculum_steps": -1, "curriculum_start": 2},
        {"curriculum_steps": True, "curriculum_start": 2},
        {"curriculum_start": 2},
    ],
)
def test_selective_copy_curriculum_options_are_validated(options):
    with pytest.raises(ConfigError, match="selective_copy"):
        make("selective_copy", seq_len=64, num_tokens=8, **options)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_selective_copy_test_rows_can_be_longer(split):
    task = make("selective_copy", seq_len=64, num_tokens=8, alphabet_size=16, test_seq_len=256)
    assert task.seq_len == 257 and task.vocab_size == 19
    region = 248 if split == "test" else 56
    for tokens, mask in rows(task, split):
        content, marker, answers, scored = selective_copy_row(tokens, mask)
        assert marker == region and len(content) == 8 and answers == content
        assert scored.tolist() == list(range(region + 1, region + 9))
    if split == "test":
        positions = [np.flatnonzero(t[:region] >= 3) for t, _ in rows(task, split)]
        assert max(p.max() for p in positions) > 200, "content spreads over the whole region"


def test_selective_copy_longer_test_rows_leave_the_other_splits_unchanged():
    plain = make("selective_copy", seq_len=32, num_tokens=4)
    longer = make("selective_copy", seq_len=32, num_tokens=4, test_seq_len=128)
    a, b = plain.batch("train", 3, 8, seed=1), longer.batch("train", 3, 8, seed=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    (a,), (b,) = plain.eval_batches("validation", 32), longer.eval_batches("validation", 32)
    assert torch.equal(a.tokens, b.tokens)
    with pytest.warns(UserWarning, match=r"scores 10 of the \d+ validation examples of 33"):
        assert longer.eval_count("validation", 33 * 10) == 10, "validation rows counted at 33"
    with pytest.warns(UserWarning, match=r"set it to \d+ to score them all"):
        assert longer.eval_count("test", 129 * 10) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert longer.eval_count("test", 129 * longer.eval_examples) == longer.eval_examples


@pytest.mark.parametrize("test_seq_len", [32, 16, 64.5, True])
def test_selective_copy_test_seq_len_is_validated(test_seq_len):
    with pytest.raises(ConfigError, match="test_seq_len"):
        make("selective_copy", seq_len=32, num_tokens=4, test_seq_len=test_seq_len)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_reverse_scores_the_reversal_and_the_end_marker(split):
    task = make("reverse", min_len=3, max_len=8, test_max_len=12, alphabet_size=5)
    assert task.seq_len == 27 and task.vocab_size == 9
    lengths = []
    for tokens, mask in rows(task, split):
        row = tokens[tokens != 0].tolist()
        separator = row.index(2)
        x = row[1:separator]
        assert row == [1, *x, 2, *x[::-1], 3] and all(4 <= s < 9 for s in x)
        assert np.flatnonzero(mask).tolist() == list(range(separator + 1, len(row)))
        lengths.append(len(x))
    assert (min(lengths) > 8) if split == "test" else (max(lengths) <= 8)


def test_reverse_names_itself_in_option_errors():
    with pytest.raises(ConfigError, match="^reverse: need integers"):
        make("reverse", min_len=5, max_len=4)
    with pytest.raises(ConfigError, match="^reverse: alphabet_size"):
        make("reverse", alphabet_size=1)
