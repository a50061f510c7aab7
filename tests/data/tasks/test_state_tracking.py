"""Parity and modular arithmetic: XOR, sums and a Python evaluation of the bracketed
expressions reproduce every answer; test inputs are longer than training inputs; the optional
length curriculum caps only the training lengths, and changes nothing when off."""

import functools
import operator

import numpy as np
import pytest
import torch

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError

SYMBOLS = {2: "(", 3: ")", 4: "+", 5: "-"}


def make(**options):
    options.setdefault("eval_examples", 32)
    return build_task(ExperimentConfig(task=TaskConfig(name="state_tracking", options=options)))


def rows(task, split):
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(4)]
    else:
        batches = list(task.eval_batches(split, 32))
    return [(t.numpy(), m.numpy()) for b in batches for t, m in zip(b.tokens, b.mask, strict=True)]


def parse(task, tokens, mask):
    """(input tokens, answer) of a row, checking the format ``x = y`` with y scored."""
    row = tokens[tokens != 0]
    assert row[-2] == 1 and np.flatnonzero(mask).tolist() == [len(row) - 1]
    return row[:-2], int(row[-1]) - 6


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_parity_is_the_xor_of_the_bits(split):
    task = make(kind="parity", min_len=3, max_len=40, test_max_len=256)
    assert task.vocab_size == 8 and task.seq_len == 258
    lengths = []
    for tokens, mask in rows(task, split):
        x, answer = parse(task, tokens, mask)
        bits = (x - 6).tolist()
        assert set(bits) <= {0, 1}
        assert answer == functools.reduce(operator.xor, bits)
        lengths.append(len(bits))
    if split == "test":
        assert min(lengths) > 40 and max(lengths) <= 256
    else:
        assert min(lengths) >= 3 and max(lengths) <= 40


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_mod_add_is_the_sum_mod_the_modulus(split):
    task = make(kind="mod_add", max_len=20, test_max_len=60)
    assert task.modulus == 5 and task.vocab_size == 11
    for tokens, mask in rows(task, split):
        x, answer = parse(task, tokens, mask)
        assert answer == int((x - 6).sum()) % 5


@pytest.mark.parametrize("modulus", [5, 7])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_bracketed_expressions_evaluate_to_the_answer(split, modulus):
    task = make(kind="mod_add", brackets=True, modulus=modulus, max_len=21, test_max_len=61)
    depths = []
    for tokens, mask in rows(task, split):
        x, answer = parse(task, tokens, mask)
        text = "".join(SYMBOLS.get(t, str(t - 6)) for t in x.tolist())
        assert len(x) % 2 == 1
        assert answer == eval(text) % modulus  # noqa: S307 (digits, + - and brackets only)
        depth = level = 0
        for char in text:
            level += {"(": 1, ")": -1}.get(char, 0)
            depth = max(depth, level)
        depths.append(depth)
        assert (len(x) > 21) == (split == "test")
    assert max(depths) >= 2, "brackets nest"


def lengths_at(task, split, step):
    batch = task.batch(split, step, 64, seed=0)
    return [int((row != 0).sum()) - 2 for row in batch.tokens]


def test_curriculum_caps_training_lengths_and_grows_to_max_len():
    task = make(
        kind="parity",
        min_len=3,
        max_len=40,
        test_max_len=80,
        curriculum_start=6,
        curriculum_steps=100,
    )
    assert [task.train_max_len(s) for s in (0, 50, 100, 1000)] == [6, 23, 40, 40]
    assert all(3 <= n <= 6 for n in lengths_at(task, "train", 0))
    assert all(3 <= n <= 23 for n in lengths_at(task, "train", 50))
    assert max(n for step in range(100, 104) for n in lengths_at(task, "train", step)) > 23
    evaluation = [parse(task, t, m) for t, m in rows(task, "validation")]
    assert max(len(x) for x, _ in evaluation) > 6, "validation keeps the full range"
    assert all(len(x) > 40 for x, _ in (parse(task, t, m) for t, m in rows(task, "test")))
    for tokens, mask in rows(task, "train"):
        x, answer = parse(task, tokens, mask)
        assert answer == int((x - 6).sum()) % 2


def test_without_a_curriculum_training_batches_are_unchanged():
    plain = make(kind="parity", min_len=3, max_len=40, test_max_len=80)
    off = make(kind="parity", min_len=3, max_len=40, test_max_len=80, curriculum_steps=0)
    assert plain.train_max_len(0) == 40
    for step in range(3):
        a, b = plain.batch("train", step, 16, seed=1), off.batch("train", step, 16, seed=1)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "options",
    [
        {"curriculum_steps": 10},
        {"curriculum_steps": 10, "curriculum_start": 2},
        {"curriculum_steps": 10, "curriculum_start": 41},
        {"curriculum_steps": -1, "curriculum_start": 5},
        {"curriculum_steps": 10, "curriculum_start": True},
        {"curriculum_start": 5},
    ],
)
def test_curriculum_options_are_validated(options):
    with pytest.raises(ConfigError):
        make(kind="parity", min_len=3, max_len=40, test_max_len=80, **options)


def test_curriculum_with_brackets_keeps_odd_lengths():
    with pytest.raises(ConfigError):
        make(
            kind="mod_add",
            brackets=True,
            min_len=4,
            max_len=21,
            test_max_len=61,
            curriculum_start=4,
            curriculum_steps=10,
        )
    task = make(
        kind="mod_add",
        brackets=True,
        min_len=3,
        max_len=21,
        test_max_len=61,
        curriculum_start=3,
        curriculum_steps=10,
    )
    assert set(lengths_at(task, "train", 0)) == {3}
