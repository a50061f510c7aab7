"""ListOps (Nangia & Bowman): evaluate nested MAX / MIN / MED / SM expressions over digits."""

from __future__ import annotations

import numpy as np

from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.registry import TASKS

ANSWER, CLOSE = 1, 2
MAX, MIN, MED, SUM_MOD = 3, 4, 5, 6
FIRST_DIGIT = 7
SUBLIST_P = 0.3


def apply(op: int, values: list[int]) -> int:
    """The value of operator `op` on `values`: MED is the median rounded down (the mean of
    the two middle values for an even count), SM the sum mod 10."""
    if op == MAX:
        return max(values)
    if op == MIN:
        return min(values)
    if op == MED:
        ordered = sorted(values)
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2
    return sum(values) % 10


@TASKS.register("listops")
class ListOps(SyntheticTask):
    """ListOps: the value of a nested MAX/MIN/MED/SM expression over digits.

    ListOps classification (Nangia & Bowman; the Long Range Arena task at small scale).

    Ids: 0 PAD, 1 ANSWER marker, 2 ``]``, 3 ``[MAX``, 4 ``[MIN``, 5 ``[MED``, 6 ``[SM``,
    digits ``d -> 7 + d``. The root is an operator with 2 .. ``max_args`` arguments (uniform);
    each argument is, while the depth is below ``max_depth``, a nested list with probability
    0.3, else a uniform digit. Expressions longer than ``max_len`` tokens are redrawn. The row
    is the expression, ANSWER, then the answer digit (scored); ``seq_len = max_len + 2``. MED
    is the median rounded down, SM the sum mod 10. Test rows follow the training distribution
    (held-out examples).

    Example (scored token in brackets)::

        [MAX 2 [MIN 4 7 ] 0 ] ANSWER [4]   ->   3 9 4 11 14 2 7 2 1 [11]
    """

    def __init__(
        self,
        max_depth: int = 3,
        max_args: int = 5,
        max_len: int = 64,
        eval_examples: int = 512,
    ) -> None:
        check(
            isinstance(max_depth, int) and max_depth >= 1,
            f"listops: max_depth must be a positive integer, got {max_depth!r}",
        )
        check(
            isinstance(max_args, int) and max_args >= 2,
            f"listops: max_args must be an integer >= 2, got {max_args!r}",
        )
        check(
            isinstance(max_len, int) and max_len >= 4,
            f"listops: max_len must be an integer >= 4 (the shortest list), got {max_len!r}",
        )
        self.max_depth = max_depth
        self.max_args = max_args
        self.max_len = max_len
        self.vocab_size = FIRST_DIGIT + 10
        self.seq_len = max_len + 2
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        while True:
            expression, value = self.tree(rng, 1)
            if len(expression) <= self.max_len:
                break
        tokens = np.array([*expression, ANSWER, FIRST_DIGIT + value], dtype=np.int64)
        scored = np.zeros(len(tokens), dtype=bool)
        scored[-1] = True
        return Example(tokens, scored)

    def tree(self, rng: np.random.Generator, depth: int) -> tuple[list[int], int]:
        """A random list at nesting `depth` (the root is 1): its tokens and value."""
        op = MAX + int(rng.integers(0, 4))
        tokens, values = [op], []
        for _ in range(int(rng.integers(2, self.max_args + 1))):
            if depth < self.max_depth and rng.random() < SUBLIST_P:
                sub_tokens, value = self.tree(rng, depth + 1)
                tokens += sub_tokens
            else:
                value = int(rng.integers(0, 10))
                tokens.append(FIRST_DIGIT + value)
            values.append(value)
        tokens.append(CLOSE)
        return tokens, apply(op, values)
