"""The Task interface: seeded batches with disjoint splits, and how a model is scored on it."""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from seqlab.errors import DataError
from seqlab.objectives.base import NLL, Batch
from seqlab.registry import TASKS

if TYPE_CHECKING:
    from seqlab.config import ExperimentConfig
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

SPLITS = ("train", "validation", "test")


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
        """NLL in nats per scored token (bits per byte for text), and for tasks with answers
        the token accuracy and exact-match rate of the objective's predictions."""
        was_training = model.training
        model.eval()
        total = NLL(0.0, 0, objective.bound)
        correct = scored_total = exact = sequences = 0
        device = model.device
        for batch in self.eval_batches(split, batch_size, max_tokens):
            batch = batch.to(device)
            total = total + objective.nll(model, batch)
            if self.scores_answers:
                predictions, scored = objective.predict(model, batch)
                hits = (predictions == batch.tokens) & scored
                correct += int(hits.sum())
                scored_total += int(scored.sum())
                exact += int(((hits | ~scored).all(dim=1) & scored.any(dim=1)).sum())
                sequences += int(scored.any(dim=1).sum())
        model.train(was_training)
        metrics: dict[str, float] = {
            "nll": total.per_token,
            "tokens": total.tokens,
            "bound": total.bound,
        }
        bytes_per_token = self.bytes_per_token(split)
        if bytes_per_token is not None:
            metrics["bits_per_byte"] = total.bits_per_byte(bytes_per_token)
        if self.scores_answers:
            metrics["accuracy"] = correct / max(scored_total, 1)
            metrics["exact_match"] = exact / max(sequences, 1)
        return metrics


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
