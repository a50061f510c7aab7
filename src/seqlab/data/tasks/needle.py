"""Needle in a haystack: recall the value planted beside a key in a long stretch of filler."""

from __future__ import annotations

import numpy as np

from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.registry import TASKS


@TASKS.register("needle")
class Needle(SyntheticTask):
    """Key-value needles in filler tokens; the row ends with one needle's key, and its value
    is the only scored token.

    Ids: 0 PAD, keys ``1 .. vocab_size//4 - 1``, values and filler both ``vocab_size//4 ..
    vocab_size - 1``: a value looks like filler, so the answer is only found by matching the
    query key to its planted copy and reading the token after it (with value ids of their own,
    "the only value-range token" would answer without retrieval). A row holds ``seq_len + 1``
    tokens: filler with ``needles`` key-value pairs (distinct keys; the other needles are
    distractors) at uniform, non-overlapping depths in the first ``seq_len - 1`` positions,
    then a queried needle's key and its value.

    Example (``vocab_size=16, seq_len=11, needles=2``; keys 1-3, values and filler 4-15; the
    scored token in brackets)::

        9 12 2 6 15 3 8 11 10 2 [6]
    """

    def __init__(
        self,
        seq_len: int = 64,
        vocab_size: int = 64,
        needles: int = 2,
        eval_examples: int = 512,
    ) -> None:
        check(
            isinstance(vocab_size, int) and vocab_size >= 8,
            f"needle: vocab_size must be an integer >= 8, got {vocab_size!r}",
        )
        check(
            isinstance(needles, int) and 1 <= needles < vocab_size // 4,
            f"needle: needles must be an integer in [1, {vocab_size // 4 - 1}], got {needles!r}",
        )
        check(
            isinstance(seq_len, int) and seq_len >= 2 * needles + 2,
            f"needle: seq_len must be an integer >= 2 * needles + 2, got {seq_len!r}",
        )
        self.vocab_size, self.needles = vocab_size, needles
        self.seq_len = seq_len + 1
        self.first_filler = vocab_size // 4
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        n, length = self.needles, self.seq_len
        tokens = rng.integers(self.first_filler, self.vocab_size, length)
        keys = 1 + rng.permutation(self.first_filler - 1)[:n]
        values = rng.integers(self.first_filler, self.vocab_size, n)
        # n non-overlapping pairs among the first length - 2 positions: gaps between pairs
        free = length - 2 - 2 * n
        starts = np.sort(rng.choice(free + n, n, replace=False)) + np.arange(n)
        tokens[starts] = keys
        tokens[starts + 1] = values
        asked = int(rng.integers(n))
        tokens[-2:] = keys[asked], values[asked]
        scored = np.zeros(length, dtype=bool)
        scored[-1] = True
        return Example(tokens, scored, info=int(starts[asked]))
