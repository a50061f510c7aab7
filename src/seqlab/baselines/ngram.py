"""Interpolated Kneser-Ney n-gram model (Kneser & Ney, 1995; Chen & Goodman, 1998)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqlab.baselines.base import (
    Baseline,
    check_finite,
    context_keys,
    count_table,
    dense_rows,
    register_table,
    table,
    table_names,
    training_targets,
)
from seqlab.errors import ConfigError, DataError
from seqlab.registry import BASELINES

if TYPE_CHECKING:
    from seqlab.objectives.base import Batch


@BASELINES.register("ngram")
class NGram(Baseline):
    """Interpolated Kneser-Ney n-gram next-token model of `order` (a context of order - 1).

    With h the last k - 1 tokens (a row's start padded with a start symbol that is never
    predicted), c_k(h, w) the count of h w at the highest order k = N and, below it, the
    continuation count N1+(· h w) (distinct tokens seen before h w) — except where h opens
    with the start symbol, which nothing precedes: there the count itself — and D = `discount`:

        p_k(w | h) = (max(c_k(h, w) - D, 0) + D · N1+(h ·) · p_{k-1}(w | h')) / Σ_w c_k(h, w)

    where h' drops the oldest token of h, N1+(h ·) is the number of distinct w after h and
    p_0 = 1/V (uniform, so an unseen token keeps mass). A context h never seen in training
    backs off entirely: p_k(· | h) = p_{k-1}(· | h'). One fixed D for every order (0 < D <= 1,
    so each p_k sums to one exactly); 0.75 is the usual choice (Chen & Goodman's estimate
    n1 / (n1 + 2 n2) is near it on most corpora).

    Buffers: per order k, a sparse table `k{k}_keys` [C] (sorted context keys Σ h_i (V+1)^i),
    `k{k}_offsets` [C + 1], `k{k}_words` [E], `k{k}_counts` [E]. Decode state: the last
    order - 1 tokens [B, order - 1]; forward arithmetic ~ 4 · V · order per token.
    """

    def __init__(self, vocab_size: int, *, order: int = 3, discount: float = 0.75) -> None:
        super().__init__(vocab_size)
        if order < 1:
            raise ConfigError(f"ngram order must be >= 1, got {order}")
        check_finite("ngram discount", discount)
        if not 0 < discount <= 1:
            raise ConfigError(f"ngram discount must lie in (0, 1], got {discount}")
        if (vocab_size + 1) ** (order - 1) >= 2**62:
            raise ConfigError(
                f"ngram order {order} over {vocab_size} tokens overflows its int64 context keys; "
                "choose a lower order"
            )
        self.order, self.discount = order, discount
        self.start = vocab_size
        for k in range(1, order + 1):
            register_table(self, f"k{k}", None)

    @property
    def data_shaped(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(n for k in range(1, self.order + 1) for n in table_names(f"k{k}"))

    def _histories(self, padded: Tensor, length: int) -> Tensor:
        """The first `length` windows `[B, length, order - 1]` of order - 1 consecutive tokens
        of `padded` `[B, S]`."""
        if self.order == 1:
            return padded.new_zeros(padded.shape[0], length, 0)
        return padded.unfold(1, self.order - 1, 1)[:, :length]

    def fit(self, batches: Iterable[Batch]) -> None:
        histories, words = [], []
        for batch in batches:
            tokens, scored = training_targets(batch)
            tokens, scored = tokens.to(self.device), scored.to(self.device)
            start = tokens.new_full((tokens.shape[0], self.order - 1), self.start)
            windows = self._histories(torch.cat([start, tokens], 1), tokens.shape[1])
            histories.append(windows[scored])
            words.append(tokens[scored])
        if not histories or sum(len(w) for w in words) == 0:
            raise DataError("ngram: the training batches hold no scored token to count")
        grams = torch.cat([torch.cat(histories), torch.cat(words)[:, None]], 1)
        for k in range(self.order, 0, -1):
            counted = self._counted_grams(grams, k)
            keys = context_keys(counted[:, :-1], self.start + 1)
            ones = torch.ones(len(counted), dtype=torch.float64, device=grams.device)
            register_table(self, f"k{k}", count_table(keys, counted[:, -1], ones))
        self.fit_flops = self.fit_flops_for(sum(len(w) for w in words))

    def _counted_grams(self, grams: Tensor, k: int) -> Tensor:
        """The k-grams `[M, k]` whose multiplicities are order k's counts, from every training
        n-gram occurrence `grams` `[E, order]`: each occurrence at the highest order; below it
        each distinct left extension (continuation counts), except for a k-gram that opens with
        the start symbol, which can have none and keeps its occurrences (Chen & Goodman, 1998)."""
        suffixes = grams[:, self.order - k :]
        if k == self.order:
            return suffixes
        extended = torch.unique(grams[:, self.order - k - 1 :], dim=0)[:, 1:]
        if k == 1:  # a unigram's first column is the predicted token, never the start symbol
            return extended
        return torch.cat(
            [extended[extended[:, 0] != self.start], suffixes[suffixes[:, 0] == self.start]]
        )

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return torch.full(
            (batch_size, self.order - 1), self.start, dtype=torch.long, device=device or self.device
        )

    def next_log_probs(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        batch, length = tokens.shape
        padded = torch.cat([state.long(), tokens.long()], 1)
        # the history after position t is padded[t + 1 : t + order]
        history = self._histories(padded[:, 1:], length).reshape(batch * length, -1)
        probs = torch.full(
            (batch * length, self.vocab_size),
            1.0 / self.vocab_size,
            dtype=torch.float64,
            device=tokens.device,
        )
        for k in range(1, self.order + 1):
            query = context_keys(history[:, history.shape[1] - (k - 1) :], self.start + 1)
            counts, found = dense_rows(query, *table(self, f"k{k}"), self.vocab_size)
            total = counts.sum(-1, keepdim=True).clamp(min=1)
            types = (counts > 0).sum(-1, keepdim=True)
            smoothed = (
                (counts - self.discount).clamp(min=0) + self.discount * types * probs
            ) / total
            probs = torch.where(found[:, None], smoothed, probs)
        new_state = padded[:, padded.shape[1] - (self.order - 1) :]
        return probs.log().view(batch, length, -1), new_state

    def fit_flops_for(self, tokens: int, iterations: int = 1) -> float:
        return float(tokens * self.order)

    def state_size(self, seq_len: int) -> int:
        return self.order - 1

    def flops_per_token(self, seq_len: int) -> float:
        return 4.0 * self.vocab_size * self.order
