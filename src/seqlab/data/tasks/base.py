"""The Task interface: seeded batches with disjoint splits, and how a model is scored on it."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import NLL, Batch
from seqlab.registry import TASKS, VALUE_HEADS

if TYPE_CHECKING:
    from seqlab.config import ExperimentConfig, ModelConfig
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

SPLITS = ("train", "validation", "test")
INFILL_STREAM = 0x1F_111
STANDARDISATION = ("shift", "scale")  # the value head options another head keeps


@dataclass
class Tally:
    """Token accuracy and exact match of predictions, summed over evaluation batches."""

    correct: int = 0
    scored: int = 0
    exact: int = 0
    sequences: int = 0

    def add(self, predictions: Tensor, scored: Tensor, tokens: Tensor) -> None:
        """Count `predictions [B, L]` against `tokens [B, L]` at the `scored [B, L]` positions
        (a row with none takes no part in exact match)."""
        hits = (predictions == tokens) & scored
        self.correct += int(hits.sum())
        self.scored += int(scored.sum())
        self.exact += int(((hits | ~scored).all(dim=1) & scored.any(dim=1)).sum())
        self.sequences += int(scored.any(dim=1).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.scored, 1)

    @property
    def exact_match(self) -> float:
        return self.exact / max(self.sequences, 1)


def infill_spans(split: str, first_row: int, rows: int, length: int, span: int) -> Tensor:
    """The infilling targets `[rows, length]` bool of evaluation rows `first_row ..`: for row
    r, `span` positions from a start drawn uniformly in 1 .. length − span from a generator
    seeded with (split, r) alone, so every objective and batch size scores the same spans
    (position 0 is never in a span: AR has nothing to predict it from)."""
    if not 1 <= span <= length - 1:
        raise DataError(f"infill_span must lie in 1 .. {length - 1} for rows of {length} tokens")
    split_index = SPLITS.index(split)
    starts = [
        int(np.random.default_rng([INFILL_STREAM, split_index, r]).integers(1, length - span + 1))
        for r in range(first_row, first_row + rows)
    ]
    index = torch.arange(length)
    start = torch.tensor(starts)[:, None]
    return (index >= start) & (index < start + span)


class Task(ABC):
    """A source of batches and a scorer.

    `batch(split, step, ...)` is a pure function of (seed, split, step): resuming at step k
    sees exactly the batches an uninterrupted run would, and rank r of a world of n takes
    rows r·B .. (r+1)·B of the same global batch.
    """

    name: str
    vocab_size: int
    seq_len: int
    scores_answers: bool = True
    # also score `Objective.generate` (generated_* metrics); None: when the objective generates
    generate_eval: bool | None = False
    infill_span: int | None = None  # also score random spans of this length given the rest
    metric_of_record: str | None = None  # what `seqlab compare` ranks by when not told
    # the value head (`seqlab.heads`) a model needs for this task's `Batch.values` (None: the
    # task has no values), with options such as the standardising shift and scale
    value_head: str | None = None
    value_head_options: dict | None = None

    def generates(self, objective: Objective) -> bool:
        """Whether evaluation scores `objective.generate` (the `generated_*` metrics)."""
        return bool(self.generate_eval) or (self.generate_eval is None and objective.generates)

    def check_objective(self, objective: Objective) -> None:
        """A ConfigError, before any training, when evaluation would need a `generate` that
        the objective does not have."""
        if self.value_head is not None and not objective.reads_values:
            raise ConfigError(
                f"task {self.name!r} has a value beside every token (model value head "
                f"{self.value_head!r}), which objective {objective.name!r} does not read; "
                f"use an objective that does (ar)"
            )
        if (self.generate_eval or self.infill_span is not None) and not objective.generates:
            needs = "generate_eval" if self.generate_eval else "infill_span"
            raise ConfigError(
                f"task {self.name!r} with {needs} scores each objective's own generation, "
                f"which objective {objective.name!r} cannot do (Objective.generate)"
            )

    @abstractmethod
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
        """A training batch of `batch_size` sequences."""

    @abstractmethod
    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        """Deterministic evaluation batches over (a prefix of) the split."""

    def bytes_per_token(self, split: str) -> float | None:
        """UTF-8 bytes per token for bits-per-byte; None for tasks that are not text."""
        return None

    def nll_metrics(self, total: NLL, split: str) -> dict[str, float]:
        """nll (nats per scored token), tokens and bound of `total`; bits_per_byte for text."""
        metrics = {"nll": total.per_token, "tokens": total.tokens, "bound": total.bound}
        bytes_per_token = self.bytes_per_token(split)
        if bytes_per_token is not None:
            metrics["bits_per_byte"] = total.bits_per_byte(bytes_per_token)
        return metrics

    @torch.no_grad()
    def evaluate(
        self,
        model: Model,
        objective: Objective,
        *,
        split: str = "validation",
        batch_size: int = 16,
        max_tokens: int | None = None,
    ) -> dict[str, float]:
        """NLL in nats per scored token (bits per byte for text); for tasks with answers the
        token accuracy and exact-match rate of the objective's `predict`, and with
        `generate_eval` (None: when the objective generates) those of its `generate`
        (`generated_accuracy`, `generated_exact_match`: every paradigm decodes the answer from
        the prompt alone, so these compare across paradigms where `predict` may be
        teacher-forced).

        With `infill_span` k: for every row a span of k tokens at a seeded position
        (`infill_spans`) is the target and the rest of the row its context; `infill_nll` is
        the objective's `nll` with only the span scored (nats per span token; a bound where
        `bound`; AR can read only the context left of the span, the honest answer for a
        left-to-right model) and `infill_accuracy` the token accuracy of `generate` there."""
        was_training = model.training
        model.eval()
        total = NLL(0.0, 0, objective.bound)
        infill = NLL(0.0, 0, objective.bound)
        answers, generated, infilled = Tally(), Tally(), Tally()
        generating = self.generates(objective)
        device = model.device
        row = 0
        for batch in self.eval_batches(split, batch_size, max_tokens):
            batch = batch.to(device)
            total = total + objective.nll(model, batch)
            if self.scores_answers:
                answers.add(*objective.predict(model, batch), batch.tokens)
                if generating:
                    generated.add(*objective.generate(model, batch), batch.tokens)
            if self.infill_span is not None:
                rows, length = batch.tokens.shape
                span = infill_spans(split, row, rows, length, self.infill_span).to(device)
                spanned = Batch(batch.tokens, span, batch.condition)
                infill = infill + objective.nll(model, spanned)
                infilled.add(*objective.generate(model, spanned), batch.tokens)
            row += batch.tokens.shape[0]
        model.train(was_training)
        metrics = self.nll_metrics(total, split)
        if self.scores_answers:
            metrics["accuracy"] = answers.accuracy
            metrics["exact_match"] = answers.exact_match
            if generating:
                metrics["generated_accuracy"] = generated.accuracy
                metrics["generated_exact_match"] = generated.exact_match
        if self.infill_span is not None:
            metrics["infill_nll"] = infill.per_token
            metrics["infill_accuracy"] = infilled.accuracy
        return metrics


class IndexedTask(Task):
    """A task over fixed examples, each split an index array `indices[split]` into them:
    training batch `step` walks seeded epochs of the split (`epoch_positions`), evaluation
    takes the split's examples in order, as many as `max_tokens` allows at `seq_len` tokens
    each. Subclasses set `indices` and give `rows`."""

    indices: dict[str, np.ndarray]

    @abstractmethod
    def rows(self, split: str, positions: np.ndarray) -> Batch:
        """The batch of `split`'s examples at `positions` `[B]` (into `split_indices`)."""

    def split_indices(self, split: str) -> np.ndarray:
        """The example indices `[N]` of `split`; a DataError for an unknown split."""
        if split not in self.indices:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.indices[split]

    def eval_count(self, split: str, max_tokens: int | None) -> int:
        """How many of `split`'s examples (in order) `max_tokens` allows (`capped_rows`)."""
        rows = len(self.split_indices(split))
        return capped_rows(self.name, split, rows, self.seq_len, max_tokens)

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
        n = len(self.split_indices(split))
        positions = epoch_positions(
            n, split, step, batch_size, seed=seed, rank=rank, world_size=world_size
        )
        return self.rows(split, positions)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        for rows in eval_slices(self.eval_count(split, max_tokens), batch_size):
            yield self.rows(split, np.arange(rows.start, rows.stop))


def model_config_for(model: ModelConfig, task: Task, objective: Objective) -> ModelConfig:
    """The model a run of `task` under `objective` builds: the vocabulary is the task's plus
    the objective's extra tokens; a task with values gives its value head and options unless
    `model.value_head` names another, which must have the same support (that of the task's
    own head, `ValueHead.support`) and keeps the task's `shift` and `scale`; the user's
    `value_head_options` win. A value head for a task without values would never be trained
    (a ConfigError); a baseline takes none."""
    vocab_size = objective.model_vocab_size(task.vocab_size)
    if model.baseline is not None:
        return dataclasses.replace(model, vocab_size=vocab_size)
    if task.value_head is None:
        if model.value_head is not None:
            raise ConfigError(
                f"task {task.name!r} has no value beside its tokens, so model.value_head "
                f"{model.value_head!r} would never be trained; remove model.value_head"
            )
        return dataclasses.replace(model, vocab_size=vocab_size)
    head = model.value_head or task.value_head
    support = VALUE_HEADS.get(head).target.support
    needed = VALUE_HEADS.get(task.value_head).target.support
    if support != needed:
        fitting = [e.name for e in VALUE_HEADS.entries() if e.target.support == needed]
        raise ConfigError(
            f"task {task.name!r} has {needed} values, but model.value_head {head!r} predicts "
            f"{support} ones; value heads that fit: {', '.join(fitting)}"
        )
    options = dict(task.value_head_options or {})
    if head != task.value_head:
        options = {k: v for k, v in options.items() if k in STANDARDISATION}
    options.update(model.value_head_options)
    return dataclasses.replace(
        model, vocab_size=vocab_size, value_head=head, value_head_options=options
    )


def build_task(config: ExperimentConfig) -> Task:
    """The task named by `config.task` (a name or import path) with its options; a task whose
    constructor takes `data` also receives `config.data`."""
    entry = TASKS.get(config.task.name)
    takes_data = "data" in inspect.signature(entry.target).parameters
    return entry.build(
        supplied={"data": config.data} if takes_data else None, **config.task.options
    )


def check_batch_request(step: int, seed: int, batch_size: int, rank: int, world_size: int) -> None:
    """The arguments every `Task.batch` takes: step and seed >= 0, batch_size >= 1 and
    0 <= rank < world_size (a ValueError otherwise: a caller's bug, not a user's input)."""
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be non-negative, got step={step} seed={seed}")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size} "
            f"rank={rank} world_size={world_size}"
        )


def epoch_positions(
    n: int, split: str, step: int, batch_size: int, *, seed: int, rank: int, world_size: int
) -> np.ndarray:
    """The example positions `[batch_size]` of rank `rank`'s rows of training batch `step`:
    rows `(step * world_size + rank) * batch_size ..` of an endless sequence of epochs over
    `n` examples, each a permutation seeded by `(seed, split, epoch)` (a pure function of
    seed, split and step)."""
    check_batch_request(step, seed, batch_size, rank, world_size)
    first = (step * world_size + rank) * batch_size
    flat = np.arange(first, first + batch_size)
    epochs = flat // n
    positions = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs).tolist():
        rows = epochs == epoch
        order = np.random.default_rng([seed, SPLITS.index(split), epoch]).permutation(n)
        positions[rows] = order[flat[rows] % n]
    return positions


def capped_rows(name: str, split: str, rows: int, width: int, max_tokens: int | None) -> int:
    """How many of a split's `rows` evaluation rows of `width` tokens a budget of `max_tokens`
    allows (all when None). A budget below one row is a DataError; one that leaves rows out
    warns, naming the budget that scores them all."""
    if max_tokens is None:
        return rows
    if max_tokens < width:
        raise DataError(
            f"max_tokens={max_tokens} is less than one {split} example of {width} tokens"
        )
    count = min(rows, max_tokens // width)
    if count < rows:
        warnings.warn(
            f"{name}: an evaluation budget of {max_tokens} tokens (train.eval_tokens, or eval "
            f"--max-tokens) scores {count} of the {rows} {split} examples of {width} tokens; "
            f"set it to {rows * width} to score them all",
            stacklevel=3,
        )
    return count


def eval_slices(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` rows over rows 0 .. count − 1, in order (the
    last may be shorter); a ValueError for batch_size < 1 (a caller's bug, not a user's)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))
