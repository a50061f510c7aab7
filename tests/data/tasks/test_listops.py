"""ListOps: an independent stack evaluator reproduces every answer."""

import statistics

import numpy as np
import pytest

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task

OPERATORS = {
    3: max,
    4: min,
    5: lambda values: int(statistics.median(values)),
    6: lambda values: sum(values) % 10,
}


def make(name: str, **options):
    options.setdefault("eval_examples", 32)
    return build_task(ExperimentConfig(task=TaskConfig(name=name, options=options)))


def rows(task, split):
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(4)]
    else:
        batches = list(task.eval_batches(split, 32))
    return [(t.numpy(), m.numpy()) for b in batches for t, m in zip(b.tokens, b.mask, strict=True)]


def evaluate(tokens: list[int]) -> tuple[int, int]:
    """Value and nesting depth of a ListOps expression, with a stack."""
    stack: list[tuple[int, list[int]]] = []
    depth = 0
    for token in tokens:
        if token in OPERATORS:
            stack.append((token, []))
            depth = max(depth, len(stack))
        elif token == 2:
            op, values = stack.pop()
            if not stack:
                return OPERATORS[op](values), depth
            stack[-1][1].append(OPERATORS[op](values))
        else:
            stack[-1][1].append(token - 7)
    raise AssertionError("unbalanced expression")


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_listops_answer_is_the_value_of_the_expression(split):
    task = make("listops", max_depth=3, max_args=5, max_len=64)
    assert task.vocab_size == 17 and task.seq_len == 66
    depths = []
    for tokens, mask in rows(task, split):
        row = tokens[tokens != 0].tolist()
        assert row[-2] == 1 and np.flatnonzero(mask).tolist() == [len(row) - 1]
        assert len(row) - 2 <= 64
        value, depth = evaluate(row[:-2])
        assert row[-1] == 7 + value
        depths.append(depth)
    assert max(depths) == 3 and min(depths) >= 1


def test_listops_median_rounds_down_between_the_middle_values():
    from seqlab.data.tasks.listops import MED, apply

    assert apply(MED, [1, 4]) == 2 and apply(MED, [9, 0, 3]) == 3 and apply(MED, [2, 2]) == 2
