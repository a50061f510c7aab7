"""The shared base of the synthetic tasks: seeded generation, padding and a held-out partition.

A synthetic task only says how to draw one example (`SyntheticTask.sample`); this module turns
that into the `Task` contract:

* **Rows.** Every example is a 1-D token array plus a boolean array marking its scored
  (answer) positions. Rows are right-padded with `PAD` (id 0 in every task, never scored) to
  the longest row of their batch (of the global batch, so every rank agrees); `seq_len` is
  the longest row any split can produce. Under the AR objective
  the scored position t is predicted from tokens < t, so every format puts the question
  before its answer.
* **Training batches** are a pure function of (seed, split, step): the global batch of
  ``batch_size * world_size`` examples is drawn in order from
  ``np.random.default_rng([seed, split_index, step])`` and rank r takes rows
  ``r * batch_size .. (r + 1) * batch_size``. The last global batch is cached, so the
  micro-steps of gradient accumulation draw it once.
* **Evaluation sets** are fixed: ``eval_examples`` examples per split from a generator seeded
  with a constant of its own (`EVAL_STREAM`), independent of the training seed, so every run
  is scored on the same examples. ``max_tokens`` keeps a prefix of
  ``max_tokens // width`` rows, where width is the split's longest row.
* **Splits.** ``train`` and ``validation`` follow the training distribution; ``test`` is the
  task's evaluation distribution, which may be longer (length extrapolation).
* **Disjointness by construction.** Every example has a partition key (its tokens unless the
  task supplies another, e.g. RegBench's automaton) hashed with BLAKE2b into
  `HOLDOUT_BUCKETS` buckets. Bucket 0 is held out: ``train`` only ever yields examples outside
  it, ``validation`` and ``test`` only examples inside it (rejection sampling), so no
  evaluation example can occur in training, for any seed and however small the example space.
  Tasks whose test examples are all longer than every training example
  (``test_is_longer = True``) are disjoint on the test split by length and skip the filter
  there.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from seqlab.data.tasks.base import SPLITS, Task, capped_rows, check_batch_request, eval_slices
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import Batch

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

PAD = 0
HOLDOUT_BUCKETS = 8
EVAL_STREAM = 0x5E0_1AB
MAX_DRAWS = 10_000

T = TypeVar("T")


def check(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds (option validation)."""
    if not condition:
        raise ConfigError(message)


def held_out(key: bytes) -> bool:
    """Whether the example with partition key `key` belongs to the held-out evaluation part."""
    digest = hashlib.blake2b(key, digest_size=8, person=b"seqlab-holdout").digest()
    return int.from_bytes(digest, "little") % HOLDOUT_BUCKETS == 0


def repeat_context(
    tokens: np.ndarray, scored: np.ndarray, context: int, times: int
) -> tuple[np.ndarray, np.ndarray]:
    """JRT-Prompt's transform: the first `context` tokens `times` times, then the rest; the
    added copies are never scored (tokens and flags 1-D, of equal length)."""
    if times == 1:
        return tokens, scored
    extra = np.tile(tokens[:context], times - 1)
    return (
        np.concatenate([tokens[:context], extra, tokens[context:]]),
        np.concatenate([scored[:context], np.zeros(len(extra), dtype=bool), scored[context:]]),
    )


@dataclass
class Example:
    """One example: `tokens` (int64), `scored` (bool, same length) marking its answers, an
    optional `info` kept with evaluation sets for per-example metrics, and the partition
    `key` (default: the tokens' bytes)."""

    tokens: np.ndarray
    scored: np.ndarray
    info: Any = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, dtype=np.int64)
        self.scored = np.asarray(self.scored, dtype=bool)
        if self.key is None:
            self.key = self.tokens.tobytes()


@dataclass
class EvalSet:
    """A split's fixed evaluation examples, padded: `tokens`/`mask` `[N, seq_len]`."""

    tokens: Tensor
    mask: Tensor
    infos: list[Any]


@dataclass
class Predictions:
    """An objective's predictions on (a prefix of) an evaluation set, as `evaluate` sees them."""

    tokens: Tensor
    predictions: Tensor
    scored: Tensor
    infos: list[Any]


def linear_curriculum(start: int, end: int, steps: int, step: int) -> int:
    """A level growing linearly (integer steps) from `start` at step 0 to `end` at `steps`,
    then staying there."""
    return start + (end - start) * min(step, steps) // steps


class SyntheticTask(Task):
    """A task whose examples are generated on the fly by `sample`; see the module docstring.

    Curriculum (a task opts in by overriding `curriculum_level`): the training rows of step s
    are drawn while `self.level` holds `curriculum_level(s)`, a task-defined difficulty that
    `sample` reads; it is None for evaluation rows and outside `batch`.
    """

    test_is_longer: bool = False
    level: int | None = None

    def __init__(self, *, eval_examples: int) -> None:
        check(
            isinstance(eval_examples, int) and eval_examples >= 1,
            f"{self.name}: eval_examples must be a positive integer, got {eval_examples!r}",
        )
        self.eval_examples = eval_examples
        self._eval_sets: dict[str, EvalSet] = {}
        self._last_batch: tuple[tuple[int, str, int, int], Tensor, Tensor] | None = None

    def curriculum_level(self, step: int) -> int | None:
        """The difficulty of the training rows at `step` (read by `sample` as `self.level`),
        or None for none: the default."""
        return None

    @abstractmethod
    def sample(self, rng: np.random.Generator, split: str) -> Example:
        """Draw one example of `split`'s distribution (``test`` may differ from the others).

        `examples` keeps only draws whose key belongs to the split (`in_split`); a task whose
        key is known before the costly part of an example can filter early with
        `first_in_split` (RegBench does, on its automaton)."""

    def in_split(self, key: bytes, split: str) -> bool:
        """Whether an example with partition key `key` may appear in `split`."""
        if split == "test" and self.test_is_longer:
            return True
        return held_out(key) != (split == "train")

    def first_in_split(self, split: str, draw: Callable[[], tuple[bytes, T]]) -> T:
        """Call `draw` (returning a partition key and a value) until the key belongs to
        `split`; the value of that draw."""
        for _ in range(MAX_DRAWS):
            key, value = draw()
            if self.in_split(key, split):
                return value
        raise DataError(
            f"{self.name}: no {split} example in {MAX_DRAWS} draws; the options leave too few "
            "distinct examples to hold some out for evaluation"
        )

    def examples(self, rng: np.random.Generator, split: str, n: int) -> list[Example]:
        """`n` examples of `split`, drawn in order from `rng`."""

        def draw() -> tuple[bytes, Example]:
            example = self.sample(rng, split)
            return example.key, example

        return [self.first_in_split(split, draw) for _ in range(n)]

    def pad(self, examples: list[Example]) -> tuple[Tensor, Tensor]:
        """Examples as `(tokens [n, W] int64, mask [n, W] bool)`, PAD-filled, where the width W
        is the longest of these rows (at most `seq_len`): short training rows of a task whose
        test rows are long then cost no compute for padding."""
        width = max((len(e.tokens) for e in examples), default=self.seq_len)
        tokens = np.full((len(examples), width), PAD, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=bool)
        for row, example in enumerate(examples):
            length = len(example.tokens)
            if length > self.seq_len or len(example.scored) != length:
                raise RuntimeError(
                    f"{self.name} produced an example of {length} tokens and "
                    f"{len(example.scored)} flags; rows hold seq_len={self.seq_len}"
                )
            tokens[row, :length] = example.tokens
            mask[row, :length] = example.scored
        return torch.from_numpy(tokens), torch.from_numpy(mask)

    def batch(
        self,
        split: str,
        step: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Batch:
        split_index = _split_index(split)
        check_batch_request(step, seed, batch_size, rank, world_size)
        key = (seed, split, step, batch_size * world_size)
        if self._last_batch is None or self._last_batch[0] != key:
            rng = np.random.default_rng([seed, split_index, step])
            self.level = self.curriculum_level(step) if split == "train" else None
            try:
                tokens, mask = self.pad(self.examples(rng, split, batch_size * world_size))
            finally:
                self.level = None
            self._last_batch = (key, tokens, mask)
        _, tokens, mask = self._last_batch
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return Batch(tokens[rows].clone(), mask[rows].clone())

    def eval_set(self, split: str) -> EvalSet:
        """The split's fixed evaluation examples (generated once, then cached)."""
        if split not in self._eval_sets:
            rng = np.random.default_rng([EVAL_STREAM, _split_index(split), EVAL_STREAM])
            examples = self.examples(rng, split, self.eval_examples)
            tokens, mask = self.pad(examples)
            self._eval_sets[split] = EvalSet(tokens, mask, [e.info for e in examples])
        return self._eval_sets[split]

    def eval_count(self, split: str, max_tokens: int | None) -> int:
        """How many of `split`'s evaluation rows `max_tokens` allows (all when None), counting
        each row at the split's padded width: where test rows are longer, validation keeps
        as many rows as its own length allows. A cap below `eval_examples` warns."""
        if max_tokens is None:
            return self.eval_examples
        width = int(self.eval_set(split).tokens.shape[1])
        return capped_rows(self.name, split, self.eval_examples, width, max_tokens)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        count = self.eval_count(split, max_tokens)
        data = self.eval_set(split)
        for rows in eval_slices(count, batch_size):
            yield Batch(data.tokens[rows].clone(), data.mask[rows].clone())

    @torch.no_grad()
    def eval_predictions(
        self,
        model: Model,
        objective: Objective,
        *,
        split: str,
        batch_size: int,
        max_tokens: int | None,
    ) -> Predictions:
        """`objective.predict` over the rows `evaluate` scores, with their infos, for tasks
        that report metrics beyond the base ones."""
        was_training = model.training
        model.eval()
        try:
            outputs = [
                objective.predict(model, batch.to(model.device))
                for batch in self.eval_batches(split, batch_size, max_tokens)
            ]
        finally:
            model.train(was_training)
        count = self.eval_count(split, max_tokens)
        data = self.eval_set(split)
        return Predictions(
            data.tokens[:count],
            torch.cat([p.cpu() for p, _ in outputs]),
            torch.cat([s.cpu() for _, s in outputs]),
            data.infos[:count],
        )


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return SPLITS.index(split)


def check_lengths(name: str, min_len: int, max_len: int, test_max_len: int) -> None:
    """Validate the usual length options: 1 <= min_len <= max_len < test_max_len."""
    check(
        all(isinstance(v, int) for v in (min_len, max_len, test_max_len))
        and 1 <= min_len <= max_len < test_max_len,
        f"{name}: need integers 1 <= min_len <= max_len < test_max_len, got min_len={min_len} "
        f"max_len={max_len} test_max_len={test_max_len}",
    )


def split_lengths(split: str, min_len: int, max_len: int, test_max_len: int) -> tuple[int, int]:
    """The inclusive length range of `split`: training lengths, or for ``test`` the longer
    ones ``max_len + 1 .. test_max_len``."""
    return (max_len + 1, test_max_len) if split == "test" else (min_len, max_len)


def check_curriculum(
    name: str, start: object, steps: object, bounds: tuple[int, int], bound_names: str
) -> tuple[int, int] | None:
    """Validate the curriculum options; returns `(start, steps)`, or None for no curriculum.

    `steps` must be an integer >= 0 (0: off); with a curriculum `start` must be an integer in
    `bounds` (named `bound_names` in the message), without one it must be left unset.
    """
    check(
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0,
        f"{name}: curriculum_steps must be an integer >= 0, got {steps!r}",
    )
    if not steps:
        check(
            start is None,
            f"{name}: curriculum_start needs curriculum_steps > 0, got "
            f"curriculum_start={start!r} curriculum_steps={steps!r}",
        )
        return None
    low, high = bounds
    check(
        isinstance(start, int) and not isinstance(start, bool) and low <= start <= high,
        f"{name}: a curriculum needs an integer curriculum_start in {bound_names} "
        f"({low} .. {high}), got {start!r}",
    )
    return start, steps
