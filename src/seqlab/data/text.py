"""Training and evaluation batches of token windows from a `TokenCorpus`.

Every batch row is a window of ``seq_len + 1`` consecutive tokens: inputs are ``row[:-1]``,
next-token targets ``row[1:]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from seqlab.data.corpora import SPLITS, TokenCorpus
from seqlab.data.tasks.base import check_batch_request, eval_slices
from seqlab.errors import DataError


class TextData:
    """Random training windows and contiguous evaluation windows over a corpus's splits."""

    def __init__(self, corpus: TokenCorpus, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        for split, tokens in corpus.splits.items():
            if len(tokens) < seq_len + 1:
                raise DataError(
                    f"the {split} split has {len(tokens)} tokens, but seq_len={seq_len} needs "
                    f"at least {seq_len + 1}; use a shorter seq_len or more text "
                    f"(corpus: {corpus.source})"
                )
        self.corpus = corpus
        self.seq_len = seq_len

    @property
    def vocab_size(self) -> int:
        return self.corpus.tokenizer.vocab_size

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes per token of `split`, to turn nats/token into bits/byte."""
        return self.corpus.bytes_per_token(split)

    def batch(
        self,
        split: str,
        step: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> torch.Tensor:
        """Int64 ``[batch_size, seq_len + 1]`` windows at random offsets of `split`.

        The global batch of ``batch_size * world_size`` offsets is drawn from a generator
        seeded with (seed, split, step), so it depends on nothing else (resuming at `step`
        gives the same batch), and `rank` gets rows ``rank * batch_size`` up to
        ``(rank + 1) * batch_size`` of it.
        """
        tokens = self.corpus.tokens(split)
        check_batch_request(step, seed, batch_size, rank, world_size)
        rng = np.random.default_rng([seed, SPLITS.index(split), step])
        offsets = rng.integers(0, len(tokens) - self.seq_len, size=batch_size * world_size)
        return self._windows(tokens, offsets[rank * batch_size : (rank + 1) * batch_size])

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Consecutive windows of `split` from its start, ``[<= batch_size, seq_len + 1]`` each.

        Window k starts at token ``k * seq_len``, so neighbours share one token and every
        token from the second on is a target exactly once. Only whole windows are made:
        they cover ``(min(len - 1, max_tokens) // seq_len) * seq_len`` targets, so at most
        ``seq_len - 1`` tokens at the end go unscored. The last batch may have fewer rows.
        """
        tokens = self.corpus.tokens(split)
        targets = len(tokens) - 1
        if max_tokens is not None:
            if max_tokens < self.seq_len:
                raise DataError(
                    f"max_tokens={max_tokens} is less than one window of seq_len={self.seq_len}"
                )
            targets = min(targets, max_tokens)
        starts = np.arange(targets // self.seq_len, dtype=np.int64) * self.seq_len
        for rows in eval_slices(len(starts), batch_size):
            yield self._windows(tokens, starts[rows])

    def _windows(self, tokens: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
        index = offsets[:, None] + np.arange(self.seq_len + 1, dtype=np.int64)
        return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
