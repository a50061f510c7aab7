"""Sorting a set of distinct numbers."""

from __future__ import annotations

import numpy as np

from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.registry import TASKS

SEP = 1
FIRST_NUMBER = 2


@TASKS.register("sort")
class Sort(SyntheticTask):
    """Sort a set of distinct numbers; exact match is the metric of record.

    Sorting: ``x SEP sorted(x)``.

    Ids: 0 PAD, 1 SEP, numbers ``v -> 2 + v`` for ``v < num_values``. x is a set of k distinct
    uniform numbers in random order, k uniform in ``min_items .. max_items``; the sorted
    sequence is scored, and a sequence counts as solved only when all of it is right, so
    ``exact_match`` is the metric of record. Rows hold ``2k + 1`` tokens,
    ``seq_len = 2 * max_items + 1``. Test rows follow the training distribution (held-out
    examples).

    Example (scored tokens in brackets)::

        7 3 12 | [3] [7] [12]   ->   9 5 14 1 [5] [9] [14]
    """

    def __init__(
        self,
        min_items: int = 2,
        max_items: int = 16,
        num_values: int = 64,
        eval_examples: int = 512,
    ) -> None:
        check(
            all(isinstance(v, int) for v in (min_items, max_items, num_values))
            and 1 <= min_items <= max_items <= num_values,
            f"sort: need integers 1 <= min_items <= max_items <= num_values, got "
            f"min_items={min_items!r} max_items={max_items!r} num_values={num_values!r}",
        )
        self.min_items = min_items
        self.max_items = max_items
        self.num_values = num_values
        self.vocab_size = FIRST_NUMBER + num_values
        self.seq_len = 2 * max_items + 1
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        k = int(rng.integers(self.min_items, self.max_items + 1))
        x = FIRST_NUMBER + rng.permutation(self.num_values)[:k]
        tokens = np.concatenate([x, [SEP], np.sort(x)])
        scored = np.zeros(len(tokens), dtype=bool)
        scored[k + 1 :] = True
        return Example(tokens, scored)
