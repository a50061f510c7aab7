"""Formal-language tasks from "Neural Networks and the Chomsky Hierarchy" (Delétang et al.)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seqlab.data.tasks.synthetic import (
    Example,
    SyntheticTask,
    check,
    check_lengths,
    split_lengths,
)
from seqlab.registry import TASKS

SEP = 1
FIRST_SYMBOL = 2
CYCLE = 5


@dataclass(frozen=True)
class Language:
    """A task of the suite: `symbols` input symbols (ids ``2 .. symbols + 1``), `answers`
    answer-only ids after them, and `solve`, input symbol indices -> output token ids."""

    symbols: int
    answers: int
    solve: Callable[[np.ndarray], np.ndarray]


def _even_pairs(x: np.ndarray) -> np.ndarray:
    # ab and ba pairs alternate along the string, so their count is even iff x[0] == x[-1].
    return np.array([5 if x[0] == x[-1] else 4])


def _cycle_navigation(x: np.ndarray) -> np.ndarray:
    return np.array([5 + (int((x == 1).sum()) - int((x == 2).sum())) % CYCLE])


LANGUAGES = {
    "even_pairs": Language(2, 2, _even_pairs),
    "cycle_navigation": Language(3, CYCLE, _cycle_navigation),
    "reverse_string": Language(2, 0, lambda x: FIRST_SYMBOL + x[::-1]),
    "duplicate_string": Language(2, 0, lambda x: FIRST_SYMBOL + np.concatenate([x, x])),
    "bucket_sort": Language(5, 0, lambda x: FIRST_SYMBOL + np.sort(x)),
}


@TASKS.register("formal")
class Formal(SyntheticTask):
    """Chomsky-hierarchy tasks (Delétang et al.): train short, test on longer inputs.

    Delétang et al.'s transduction tasks as ``x SEP y``: x is uniform over the input
    alphabet with length uniform in ``min_len .. max_len`` (train, validation) or
    ``max_len + 1 .. test_max_len`` (test; strictly longer), y is the answer, all scored.

    Ids: 0 PAD, 1 SEP, input symbols from 2, then answer-only ids:

    * ``even_pairs`` (regular): x over {a=2, b=3}; y is EVEN=5 if the number of ``ab`` and
      ``ba`` pairs is even, else ODD=4. ``a b b a -> 2 3 3 2 1 [5]``
    * ``cycle_navigation`` (regular): x over {STAY=2, +1=3, -1=4} moves on a cycle of 5
      starting at 0; y is the final position p as ``5 + p``. ``+1 +1 -1 STAY +1 -> 3 3 4 2 3 1
      [7]``
    * ``reverse_string`` (deterministic context-free): x over {a=2, b=3}; y is x reversed.
      ``a a b -> 2 2 3 1 [3] [2] [2]``
    * ``duplicate_string`` (context-sensitive): x over {a=2, b=3}; y is ``x x``.
      ``a b -> 2 3 1 [2] [3] [2] [3]``
    * ``bucket_sort`` (context-sensitive): x over 5 ordered symbols 2-6; y is x sorted.
      ``4 2 6 2 -> 4 2 6 2 1 [2] [2] [4] [6]``

    ``seq_len`` covers the longest test row (``test_max_len + 1 + len(y)``).
    """

    test_is_longer = True

    def __init__(
        self,
        kind: str = "even_pairs",
        min_len: int = 1,
        max_len: int = 40,
        test_max_len: int = 100,
        eval_examples: int = 512,
    ) -> None:
        check(
            kind in LANGUAGES,
            f"formal: unknown kind {kind!r}; valid kinds: {', '.join(LANGUAGES)}",
        )
        check_lengths("formal", min_len, max_len, test_max_len)
        self.kind = kind
        self.language = LANGUAGES[kind]
        self.lengths = (min_len, max_len, test_max_len)
        self.vocab_size = FIRST_SYMBOL + self.language.symbols + self.language.answers
        longest = self.language.solve(np.zeros(test_max_len, dtype=np.int64))
        self.seq_len = test_max_len + 1 + len(longest)
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        low, high = split_lengths(split, *self.lengths)
        x = rng.integers(0, self.language.symbols, int(rng.integers(low, high + 1)))
        tokens = np.concatenate([FIRST_SYMBOL + x, [SEP], self.language.solve(x)])
        scored = np.zeros(len(tokens), dtype=bool)
        scored[len(x) + 1 :] = True
        return Example(tokens, scored)
