"""Most-popular: every position predicts the training frequency of each token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqlab.baselines.base import Baseline, check_finite, training_targets
from seqlab.errors import ConfigError, DataError
from seqlab.registry import BASELINES

if TYPE_CHECKING:
    from seqlab.objectives.base import Batch


@BASELINES.register("popularity")
class Popularity(Baseline):
    """Most-popular: p(w) = (c(w) + α) / (Σ_v c(v) + α V) at every position, whatever came
    before, with c(w) the number of times w is a scored training target and α = `smoothing`
    (add-α, so an unseen token keeps mass; 0 allows log 0 for tokens never seen).

    Buffer `frequency` [V] (the counts c, float64). No decode state; forward arithmetic: V
    per token (normalising the counts)."""

    def __init__(self, vocab_size: int, *, smoothing: float = 1.0) -> None:
        super().__init__(vocab_size)
        check_finite(f"{type(self).name} smoothing", smoothing)
        if not smoothing >= 0:
            raise ConfigError(f"{type(self).name} smoothing must be >= 0, got {smoothing}")
        self.smoothing = smoothing
        self.register_buffer("frequency", torch.zeros(vocab_size, dtype=torch.float64))

    def fit(self, batches: Iterable[Batch]) -> None:
        frequency = torch.zeros_like(self.frequency)
        previous, targets = [], []
        for batch in batches:
            tokens, scored = training_targets(batch)
            tokens, scored = tokens.to(self.device), scored.to(self.device)
            previous.append(tokens[:, :-1][scored[:, 1:]])
            targets.append(tokens[scored])
        if not targets or sum(len(t) for t in targets) == 0:
            raise DataError(f"{type(self).name}: the training batches hold no scored token")
        previous_tokens, target_tokens = torch.cat(previous), torch.cat(targets)
        frequency.index_add_(
            0, target_tokens, torch.ones_like(target_tokens, dtype=frequency.dtype)
        )
        self.frequency = frequency
        self.fit_pairs(previous_tokens, target_tokens)
        self.fit_flops = self.fit_flops_for(len(target_tokens))

    def fit_pairs(self, previous: Tensor, targets: Tensor) -> None:
        """What a subclass also learns from each (previous token, target) pair."""

    def popularity(self) -> Tensor:
        """p(w) `[V]` (float64)."""
        counts = self.frequency + self.smoothing
        return counts / counts.sum().clamp(min=torch.finfo(counts.dtype).tiny)

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return torch.zeros(batch_size, 0, dtype=torch.long, device=device or self.device)

    def next_log_probs(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        log_probs = self.popularity().log()
        return log_probs.expand(*tokens.shape, -1), state

    def flops_per_token(self, seq_len: int) -> float:
        return float(self.vocab_size)
