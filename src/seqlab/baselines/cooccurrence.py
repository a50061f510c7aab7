"""Item-to-item co-occurrence: the next token from counts after the last one."""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.baselines.base import (
    check_finite,
    count_table,
    dense_rows,
    register_table,
    table,
    table_names,
)
from seqlab.baselines.popularity import Popularity
from seqlab.errors import ConfigError
from seqlab.registry import BASELINES


@BASELINES.register("cooccurrence")
class Cooccurrence(Popularity):
    """Item-to-item: the next token from how often each followed the last one in training,
    smoothed towards the most-popular distribution:

        p(w | a) = (c(a, w) + β · p_pop(w)) / (Σ_v c(a, v) + β)

    with c(a, w) the number of scored targets w right after a, β = `weight` (how many
    pseudo-observations the popularity prior is worth) and p_pop the `popularity` baseline's
    distribution (add-`smoothing`); a token never seen before a target gets p_pop itself.

    Buffers: `frequency` [V] and the sparse table `pairs_keys` [C], `pairs_offsets`
    [C + 1], `pairs_words` [E], `pairs_counts` [E]. No decode state (it reads the current
    token only); forward arithmetic ~ 3 V per token."""

    data_shaped = table_names("pairs")

    def __init__(self, vocab_size: int, *, smoothing: float = 1.0, weight: float = 1.0) -> None:
        super().__init__(vocab_size, smoothing=smoothing)
        check_finite("cooccurrence weight", weight)
        if not weight > 0:
            raise ConfigError(f"cooccurrence weight must be > 0, got {weight}")
        self.weight = weight
        register_table(self, "pairs", None)

    def fit_pairs(self, previous: Tensor, targets: Tensor) -> None:
        ones = torch.ones(len(targets), dtype=torch.float64, device=targets.device)
        register_table(self, "pairs", count_table(previous, targets, ones))

    def next_log_probs(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        counts, _ = dense_rows(tokens.reshape(-1).long(), *table(self, "pairs"), self.vocab_size)
        prior = self.weight * self.popularity()
        probs = (counts + prior) / (counts.sum(-1, keepdim=True) + self.weight)
        return probs.log().view(*tokens.shape, -1), state

    def flops_per_token(self, seq_len: int) -> float:
        return 3.0 * self.vocab_size
