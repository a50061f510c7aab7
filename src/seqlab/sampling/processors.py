"""Logits processors with the Hugging Face protocol `(input_ids, scores) -> scores`.

`input_ids` is `[B, T]` (everything generated so far, prompt included) and `scores` the
next-token logits `[B, V]`; a processor returns new logits. A list of processors applies
in order, so a user's own callable plugs in beside these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from seqlab.errors import ConfigError

LogitsProcessor = Callable[[Tensor, Tensor], Tensor]


class Temperature:
    """scores / T; T = 0 is the limit, every logit but the largest at −inf (greedy)."""

    def __init__(self, temperature: float) -> None:
        if not 0 <= temperature < float("inf"):
            raise ConfigError(f"temperature must be finite and >= 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.temperature == 0:
            top = scores.max(dim=-1, keepdim=True).values
            return scores.masked_fill(scores < top, -torch.inf)
        return scores / self.temperature


class TopK:
    """Keep the k largest logits per row, −inf elsewhere."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ConfigError(f"top_k must be >= 1, got {k}")
        self.k = k

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.k, scores.shape[-1])
        threshold = scores.topk(k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < threshold, -torch.inf)


class TopP:
    """Nucleus: keep the smallest set of tokens whose probability reaches p (at least one)."""

    def __init__(self, p: float) -> None:
        if not 0 < p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {p}")
        self.p = p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= self.p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, -torch.inf)


class MinP:
    """Keep tokens whose probability is at least `p` times the largest one (Nguyen et al.)."""

    def __init__(self, p: float) -> None:
        if not 0 <= p <= 1:
            raise ConfigError(f"min_p must lie in [0, 1], got {p}")
        self.p = p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = scores.softmax(dim=-1)
        threshold = self.p * probs.max(dim=-1, keepdim=True).values
        return scores.masked_fill(probs < threshold, -torch.inf)


class TypicalP:
    """Locally typical sampling (Meister et al.): sort tokens by |−log p − H| and keep the
    smallest such set whose probability reaches `p` (at least one)."""

    def __init__(self, p: float) -> None:
        if not 0 < p <= 1:
            raise ConfigError(f"typical_p must lie in (0, 1], got {p}")
        self.p = p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        log_probs = scores.log_softmax(dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).nan_to_num().sum(dim=-1, keepdim=True)
        surprise_gap = (-log_probs - entropy).abs()
        order = surprise_gap.argsort(dim=-1)
        sorted_probs = probs.gather(-1, order)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= self.p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, -torch.inf)


class RepetitionPenalty:
    """CTRL's penalty (Keskar et al.): every token already in `input_ids` has its logit
    divided by `penalty` when positive, multiplied when negative."""

    def __init__(self, penalty: float) -> None:
        if not 0 < penalty < float("inf"):
            raise ConfigError(f"repetition_penalty must be finite and > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        seen = scores.gather(-1, input_ids)
        seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return scores.scatter(-1, input_ids, seen)


def apply_processors(
    processors: Sequence[LogitsProcessor], input_ids: Tensor, scores: Tensor
) -> Tensor:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def sampling_processors(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
    repetition_penalty: float | None = None,
) -> list[LogitsProcessor]:
    """The usual processors and sampling filters, in the order Hugging Face applies them:
    repetition penalty, temperature, top-k, top-p, min-p, typical-p."""
    processors: list[LogitsProcessor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(repetition_penalty))
    if temperature != 1.0:
        processors.append(Temperature(temperature))
    if top_k is not None:
        processors.append(TopK(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopP(top_p))
    if min_p is not None and min_p > 0:
        processors.append(MinP(min_p))
    if typical_p is not None and typical_p < 1.0:
        processors.append(TypicalP(typical_p))
    return processors
