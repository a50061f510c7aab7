"""The Objective interface (a generation paradigm) and the batch it consumes."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqlab.auxiliary import auxiliary_losses, clear_auxiliary_losses, recorded_metrics
from seqlab.errors import ConfigError, ShapeError
from seqlab.layout import Layout

if TYPE_CHECKING:
    from seqlab.model import Model


@dataclass
class Batch:
    """Token sequences `[B, L]`; `mask` `[B, L]` marks the positions whose prediction is
    scored (None: all); `condition` `[B]` holds optional class labels for guidance.

    `values` `[B, L]` (float) is a continuous value beside each token (an inter-event time, a
    series value) for a model with a value head (`seqlab.heads`), scored where `value_mask`
    `[B, L]` says (None: where `mask` says); objectives that read values declare
    `reads_values`."""

    tokens: Tensor
    mask: Tensor | None = None
    condition: Tensor | None = None
    values: Tensor | None = None
    value_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2:
            raise ShapeError(f"batch tokens must have shape [B, L], got {list(self.tokens.shape)}")
        for name in ("mask", "values", "value_mask"):
            part = getattr(self, name)
            if part is not None and part.shape != self.tokens.shape:
                raise ShapeError(
                    f"batch {name} must have the tokens' shape {list(self.tokens.shape)}, "
                    f"got {list(part.shape)}"
                )
        if self.value_mask is not None and self.values is None:
            raise ShapeError("batch value_mask is set but the batch has no values")

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(
            move(self.tokens),
            move(self.mask),
            move(self.condition),
            move(self.values),
            move(self.value_mask),
        )


@dataclass
class NLL:
    """A summed negative log-likelihood in nats over `tokens` scored positions.

    `bound` is True when the value is an upper bound (a diffusion ELBO), printed as "≤".
    """

    nats: float
    tokens: int
    bound: bool = False

    @property
    def per_token(self) -> float:
        return self.nats / max(self.tokens, 1)

    def __add__(self, other: NLL) -> NLL:
        return NLL(self.nats + other.nats, self.tokens + other.tokens, self.bound or other.bound)

    def bits_per_byte(self, bytes_per_token: float) -> float:
        return self.nats / (self.tokens * bytes_per_token * math.log(2))


class Objective(ABC):
    """A paradigm: noise process x per-position schedule x context layout (x sampler)."""

    name: str
    bound: bool = False
    layout: Layout = Layout.CAUSAL
    paradigm: str = "ar"  # how its models decode: the samplers declaring the same paradigm
    extra_tokens: int = 0
    vocab_size: int | None = None
    step: int | None = None
    stops_early: bool = False  # `generate` may stop before filling every scored position
    reads_values: bool = False  # trains and scores a model's value head on `Batch.values`

    def set_step(self, step: int) -> None:
        """The trainer calls this before each training step (0-based) with the step it is
        about to take, so a curriculum can follow training; `step` stays None outside
        training, where an objective acts as at the end of its curriculum."""
        self.step = step

    def bind(self, vocab_size: int) -> Objective:
        """Attach the data vocabulary; the model's vocabulary is `vocab_size + extra_tokens`
        (e.g. one extra id, `vocab_size`, for the absorbing-diffusion mask token)."""
        self.vocab_size = vocab_size
        return self

    def model_vocab_size(self, vocab_size: int) -> int:
        return vocab_size + self.extra_tokens

    @abstractmethod
    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Training loss (a scalar to minimise) and metrics to log."""

    def training_loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """`loss` plus the auxiliary losses the model's layers recorded in its forward (see
        `seqlab.auxiliary`), each also reported as the metric `aux_<name>`, and the metrics
        they recorded, under their own names."""
        clear_auxiliary_losses(model)
        loss, metrics = self.loss(model, batch)
        for name, value in auxiliary_losses(model).items():
            loss = loss + value
            metrics[f"aux_{name}"] = value.detach().item()
        metrics.update(recorded_metrics(model))
        return loss, metrics

    @abstractmethod
    def nll(self, model: Model, batch: Batch) -> NLL:
        """Summed NLL in nats of the batch's scored tokens (exact, or a bound)."""

    @abstractmethod
    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """The model's single-pass best guess for every scored token.

        Returns `(predictions [B, L], scored [B, L] bool)` aligned with `batch.tokens`: for AR
        the argmax of the next-token logits given the true prefix (teacher forcing); for
        diffusion the argmax at the scored positions with all of them noised at once.
        """

    @property
    def generates(self) -> bool:
        """Whether this objective defines `generate` (generation-based evaluation)."""
        return type(self).generate is not Objective.generate

    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """The objective's own greedy decoding of every scored token from the unscored ones.

        Returns `(predictions [B, L], scored [B, L] bool)` like `predict`, but every scored
        position is filled by the paradigm's generation given only the unscored positions
        (the prompt, the context): the true values of scored tokens are never read, and
        unscored positions are returned unchanged. Generation-based evaluation
        (`Task.generate_eval`) scores this, comparable across paradigms."""
        raise ConfigError(
            f"objective {self.name!r} defines no generate (needed for generation-based "
            f"evaluation: task generate_eval or infill_span)"
        )

    @property
    def ranks_next(self) -> bool:
        """Whether this objective defines `next_log_probs` (ranking the next token)."""
        return type(self).next_log_probs is not Objective.next_log_probs

    def next_log_probs(self, model: Model, context: Tensor) -> Tensor:
        """Log-probabilities `[B, V]` over the data vocabulary of the token that follows each
        row of `context [B, L]`; every row ends at its last column (pad rows on the left).
        Ranking tasks (`seqrec`) score their candidates with it."""
        raise ConfigError(
            f"objective {self.name!r} defines no next_log_probs (needed to rank the next "
            f"token: task seqrec)"
        )


def scored_mask(batch: Batch) -> Tensor:
    """The positions `[B, L]` whose prediction is scored (all when the batch has no mask)."""
    return torch.ones_like(batch.tokens, dtype=torch.bool) if batch.mask is None else batch.mask
