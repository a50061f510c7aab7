"""Copying: the "Repeat After Me" string copy (`copy`), its reversal (`reverse`) and the Mamba
paper's `selective_copy`."""

from __future__ import annotations

import numpy as np

from seqlab.data.tasks.synthetic import (
    Example,
    SyntheticTask,
    check,
    check_curriculum,
    check_lengths,
    linear_curriculum,
    split_lengths,
)
from seqlab.registry import TASKS

BOS, SEP, EOS = 1, 2, 3


@TASKS.register("copy")
class Copy(SyntheticTask):
    """Copy a random string (Repeat After Me), tested on up to 3x longer strings.

    String copying (Jelassi et al., "Repeat After Me"): ``$ x | x .``.

    Ids: 0 PAD, 1 ``$`` (start), 2 ``|`` (separator), 3 ``.`` (end), alphabet symbols
    ``4 .. alphabet_size + 3``. x is a uniform random string whose length is uniform in
    ``min_len .. max_len`` (train, validation) or ``max_len + 1 .. test_max_len`` (test:
    strictly longer, length extrapolation). Scored: the copy of x and the final ``.``. Rows
    hold ``2 * len(x) + 3`` tokens, ``seq_len = 2 * test_max_len + 3``.

    Example (x = ``c a b``, symbols a=4, b=5, c=6; scored tokens in brackets)::

        $ c a b | [c] [a] [b] [.]   ->   1 6 4 5 2 [6] [4] [5] [3]
    """

    test_is_longer = True

    def __init__(
        self,
        min_len: int = 5,
        max_len: int = 20,
        test_max_len: int = 60,
        alphabet_size: int = 26,
        eval_examples: int = 512,
    ) -> None:
        check_lengths(self.name, min_len, max_len, test_max_len)
        check(
            isinstance(alphabet_size, int) and alphabet_size >= 2,
            f"{self.name}: alphabet_size must be an integer >= 2, got {alphabet_size!r}",
        )
        self.lengths = (min_len, max_len, test_max_len)
        self.alphabet_size = alphabet_size
        self.vocab_size = alphabet_size + 4
        self.seq_len = 2 * test_max_len + 3
        super().__init__(eval_examples=eval_examples)

    def target(self, x: np.ndarray) -> np.ndarray:
        """The answer to the string `x`: `x` itself."""
        return x

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        low, high = split_lengths(split, *self.lengths)
        n = int(rng.integers(low, high + 1))
        x = 4 + rng.integers(0, self.alphabet_size, n)
        tokens = np.concatenate([[BOS], x, [SEP], self.target(x), [EOS]])
        scored = np.zeros(len(tokens), dtype=bool)
        scored[n + 2 :] = True
        return Example(tokens, scored)


@TASKS.register("reverse")
class Reverse(Copy):
    """Reverse a random string, tested on up to 3x longer strings.

    ``$ x | reversed(x) .``, with the ids, lengths, splits and scoring of `copy`: only the
    reversal and the final ``.`` are scored. Under AR the first answer token is the source's
    last, so the whole source must be held before answering (unlike copy, where the answer
    can follow the source a fixed distance behind).

    Example (x = ``c a b``, symbols a=4, b=5, c=6; scored tokens in brackets)::

        $ c a b | [b] [a] [c] [.]   ->   1 6 4 5 2 [5] [4] [6] [3]
    """

    def target(self, x: np.ndarray) -> np.ndarray:
        """The answer to the string `x`: `x` reversed."""
        return x[::-1]


BLANK, COPY = 1, 2


@TASKS.register("selective_copy")
class SelectiveCopy(SyntheticTask):
    """Selective copying (Mamba): output the content tokens scattered among blanks.

    Selective copying (Gu & Dao, Mamba): content tokens scattered among blanks, then a
    marker after which the content tokens must be produced in order.

    Ids: 0 PAD, 1 BLANK (noise), 2 COPY (marker), content symbols
    ``3 .. alphabet_size + 2``. A row holds ``seq_len + 1`` tokens (``seq_len`` is the model's
    input length): a region of ``seq_len - num_tokens`` positions where ``num_tokens`` uniform
    random symbols sit at uniform random distinct positions and every other position is
    BLANK, then COPY, then the symbols in order of appearance, all scored. Under AR the model
    emits each symbol after COPY and the previous ones (the paper feeds one marker per output
    instead; under `ar` every target is also the next input, so that format would need another
    objective). Test rows follow the training distribution (held-out examples), unless
    ``test_seq_len`` is set: then test rows have a region of ``test_seq_len - num_tokens``
    positions (length extrapolation: the same content among many more blanks, which a
    selective model can skip and a time-invariant one cannot), and the task's ``seq_len``
    covers them; training and validation rows keep ``seq_len``.

    Example (``seq_len=10, num_tokens=3``; symbols a=3, b=4; _ is BLANK; scored in brackets)::

        _ b _ _ a _ a | [b] [a] [a]   ->   1 4 1 1 3 1 3 2 [4] [3] [3]

    Token-count curriculum (off by default): with ``curriculum_steps > 0`` a training row
    holds k content tokens, k growing linearly from ``curriculum_start`` at step 0 to
    ``num_tokens`` at step ``curriculum_steps``, then staying there. The region keeps its
    ``seq_len - num_tokens`` positions (the rows are ``num_tokens - k`` shorter: fewer
    answers). Only training batches follow it; validation and test always hold
    ``num_tokens``.
    """

    def __init__(
        self,
        seq_len: int = 64,
        num_tokens: int = 8,
        alphabet_size: int = 16,
        eval_examples: int = 512,
        curriculum_start: int | None = None,
        curriculum_steps: int = 0,
        test_seq_len: int | None = None,
    ) -> None:
        check(
            isinstance(num_tokens, int)
            and isinstance(seq_len, int)
            and 1 <= num_tokens <= seq_len - num_tokens,
            f"selective_copy: need integers 1 <= num_tokens <= seq_len - num_tokens, got "
            f"seq_len={seq_len!r} num_tokens={num_tokens!r}",
        )
        check(
            isinstance(alphabet_size, int) and alphabet_size >= 1,
            f"selective_copy: alphabet_size must be a positive integer, got {alphabet_size!r}",
        )
        self.curriculum = check_curriculum(
            "selective_copy", curriculum_start, curriculum_steps, (1, num_tokens), "1 .. num_tokens"
        )
        check(
            test_seq_len is None
            or (
                isinstance(test_seq_len, int)
                and not isinstance(test_seq_len, bool)
                and test_seq_len > seq_len
            ),
            f"selective_copy: test_seq_len must be an integer > seq_len={seq_len!r} (or unset), "
            f"got {test_seq_len!r}",
        )
        self.region = seq_len - num_tokens
        self.test_region = self.region if test_seq_len is None else test_seq_len - num_tokens
        self.test_is_longer = test_seq_len is not None
        self.num_tokens = num_tokens
        self.alphabet_size = alphabet_size
        self.vocab_size = alphabet_size + 3
        self.seq_len = (seq_len if test_seq_len is None else test_seq_len) + 1
        super().__init__(eval_examples=eval_examples)

    def train_tokens(self, step: int) -> int:
        """The number of content tokens of a training row at `step`: `num_tokens`, or the
        curriculum's current count."""
        if self.curriculum is None:
            return self.num_tokens
        return linear_curriculum(self.curriculum[0], self.num_tokens, self.curriculum[1], step)

    def curriculum_level(self, step: int) -> int | None:
        """With a curriculum, the number of content tokens of the training rows at `step`."""
        return None if self.curriculum is None else self.train_tokens(step)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        count = self.num_tokens
        if self.level is not None:  # set by `batch` for training rows only
            count = self.level
        region = self.test_region if split == "test" else self.region
        positions = np.sort(rng.permutation(region)[:count])
        content = 3 + rng.integers(0, self.alphabet_size, count)
        length = region + 1 + count
        tokens = np.full(length, BLANK, dtype=np.int64)
        tokens[positions] = content
        tokens[region] = COPY
        tokens[region + 1 :] = content
        scored = np.zeros(length, dtype=bool)
        scored[region + 1 :] = True
        return Example(tokens, scored)
