"""InfLLM (Xiao et al., 2024): training-free retrieved block memory."""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.ops.kv_cache.base import (
    BlockMemory,
    BoundedKVCache,
    Entries,
    KVPolicy,
    keep_top,
    register,
)


@register("infllm")
class InfLLM(KVPolicy):
    """Each step reads the first `sinks` tokens, the local window, the tokens that left the
    window but do not yet fill a block, and the `top_k` blocks of the memory whose
    representative keys best match the step's queries; the rest of the distant context is
    stored in blocks of `block_size` tokens (memory that may live off the accelerator).

    A block's `representatives` are its keys with the most attention mass received while
    they were local; its relevance to a step is the mean of q̄·r over them, q̄ the mean query
    of the step and of the query heads sharing the key/value head (each key/value head
    retrieves its own blocks). The budget is what a step reads at most besides its own
    tokens: sinks + window + (top_k + 1) · block_size, which sets the window.
    """

    def __init__(
        self,
        budget: int,
        *,
        sinks: int = 4,
        block_size: int = 16,
        representatives: int = 4,
        top_k: int = 4,
        chunk: int = 1,
    ) -> None:
        super().__init__(budget, chunk=chunk)
        for option, value, least in (
            ("sinks", sinks, 0),
            ("block_size", block_size, 1),
            ("representatives", representatives, 1),
            ("top_k", top_k, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(
                    f"kv_cache infllm: {option} must be an integer >= {least}, got {value!r}"
                )
        if representatives > block_size:
            raise ConfigError(
                f"kv_cache infllm: representatives must be <= block_size ({block_size}), "
                f"got {representatives}"
            )
        self.window = budget - sinks - (top_k + 1) * block_size
        if self.window < 1:
            raise ConfigError(
                f"kv_cache infllm: budget must exceed sinks + (top_k + 1) * block_size = "
                f"{budget - self.window}, got {budget}"
            )
        self.sinks, self.block_size = sinks, block_size
        self.representatives, self.top_k = representatives, top_k

    @property
    def slots(self) -> int:
        return self.sinks + self.window + self.block_size - 1

    def empty_memory(self, k: Tensor, v: Tensor) -> BlockMemory:
        b, _, h, d = k.shape
        s, r = self.block_size, self.representatives
        return BlockMemory(
            k.new_zeros(b, 0, h, s, d),
            v.new_zeros(b, 0, h, s, v.shape[-1]),
            torch.full((b, 0, h, s), -1, dtype=torch.long, device=k.device),
            k.new_zeros(b, 0, h, r, d),
        )

    def memory_numbers(self, seq_len: int, k_dim: int, v_dim: int) -> int:
        """The tokens past the sinks that left the window, (T − sinks − window)⁺, move in whole
        blocks; each keeps block_size keys, values and positions and its representatives."""
        blocks = max(0, seq_len - self.sinks - self.window) // self.block_size
        per_block = self.block_size * (k_dim + v_dim + 1) + self.representatives * k_dim
        return blocks * per_block

    def retrieve(self, memory: BlockMemory, q: Tensor) -> Tensor:
        """The blocks each row and key/value head reads `[B, k, H]` (an empty block where
        fewer hold tokens), by relevance mean_r q̄·r, ties to the earlier block."""
        b, _, hq, d = q.shape
        h = memory.k.shape[2]
        query = q.reshape(b, -1, h, hq // h, d).mean(dim=(1, 3))
        relevance = torch.einsum("bhd,bmhrd->bmh", query, memory.representatives)
        relevance = relevance / self.representatives
        relevance = relevance.double().masked_fill(memory.positions[..., 0] < 0, -torch.inf)
        top = min(self.top_k, memory.k.shape[1])
        return relevance.argsort(dim=1, descending=True, stable=True)[:, :top]

    def readable(self, cache: BoundedKVCache, q: Tensor) -> Entries:
        memory = cache.memory
        if memory is None or memory.k.shape[1] == 0 or self.top_k == 0:
            return cache.entries
        chosen = self.retrieve(memory, q)
        b, m, h, s = memory.positions.shape

        def pick(t: Tensor) -> Tensor:
            index = chosen.reshape(b, -1, h, *[1] * (t.dim() - 3))
            blocks = t.gather(1, index.expand(-1, -1, -1, *t.shape[3:]))
            return blocks.transpose(2, 3).reshape(b, -1, h, *t.shape[4:])

        positions = pick(memory.positions)
        count = (positions >= 0).to(cache.count.dtype)
        retrieved = Entries(
            pick(memory.k), pick(memory.v), positions, count, torch.zeros_like(count)
        )
        return cache.entries.cat(retrieved)

    def compress(
        self, e: Entries, newest: Tensor, memory: BlockMemory | None
    ) -> tuple[Entries, BlockMemory | None]:
        """Tokens past the window move, oldest first, into the memory in whole blocks."""
        assert memory is not None
        position = e.positions[:, :, 0]  # every head holds the same local positions
        left = (position >= self.sinks) & (position <= (newest[:, None] - self.window))
        blocks = int(left.sum(dim=1).max()) // self.block_size
        if blocks:
            e, memory = self._to_memory(e, left, memory, blocks)
        return keep_top(e, e.positions.double(), self.slots), memory

    def _to_memory(
        self, e: Entries, left: Tensor, memory: BlockMemory, blocks: int
    ) -> tuple[Entries, BlockMemory]:
        b, n, h = e.count.shape
        s, r = self.block_size, self.representatives
        position = e.positions[:, :, 0]
        # the oldest whole blocks of the tokens that left the window, per row
        order = torch.where(left, position, torch.iinfo(position.dtype).max).argsort(dim=1)
        take = order[:, : blocks * s]
        rank = torch.arange(blocks * s, device=e.k.device)
        moved = rank[None] < (left.sum(dim=1, keepdim=True) // s) * s
        index = take[:, :, None].expand(-1, -1, h)
        part = e.gather(index)
        valid = moved[:, :, None].expand(-1, -1, h)
        to_blocks = [t.reshape(b, blocks, s, h, *t.shape[3:]).transpose(2, 3) for t in part]
        k, v, pos, _, score = to_blocks
        pos = pos.masked_fill(~valid.reshape(b, blocks, s, h).transpose(2, 3), -1)
        best = score.double().argsort(dim=-1, descending=True, stable=True)[..., :r]
        reps = k.gather(3, best[..., None].expand(-1, -1, -1, -1, k.shape[-1]))
        added = BlockMemory(k, v, pos, reps)
        # rows moving fewer blocks pad with empty ones; drop the moved tokens from the cache
        memory = BlockMemory(
            *(
                torch.cat([getattr(memory, f), getattr(added, f)], dim=1)
                for f in ("k", "v", "positions", "representatives")
            )
        )
        gone = torch.zeros(b, n, dtype=torch.bool, device=e.k.device)
        gone.scatter_(1, take, moved)
        gone = gone[:, :, None].expand(-1, -1, h)
        e = e._replace(
            positions=e.positions.masked_fill(gone, -1), count=e.count.masked_fill(gone, 0)
        )
        return e, memory
