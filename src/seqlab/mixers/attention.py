"""Multi-head softmax attention with grouped-query heads, rotary positions and a KV cache."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seqlab.config import from_dict
from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.layout import ALL_LAYOUTS, CAUSAL_ONLY, Layout, LayoutKind
from seqlab.mixers.base import Mixer, ValueMap, check_input
from seqlab.ops.attention import (
    apply_rotary,
    arange_rotary_angles,
    attention_reference,
    block_causal_mask,
    block_diffusion_mask,
    rotary_angles,
    scaled_dot_product_attention,
)
from seqlab.ops.kv_cache.base import BoundedKVCache, KVPolicy
from seqlab.ops.ring_attention import check_ulysses_heads, sharded_attention
from seqlab.ops.sparse_attention import PATTERNS, block_topk_mask, sparse_transformer_mask
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import SequenceShard, current_shard, shard_columns

COMBINES = ("union", "heads", "layers")


@dataclass(frozen=True)
class Sparsity:
    """The `sparsity` option of attention: which causal (query, key) pairs are read.

    Keys:
        pattern: strided | fixed (Sparse Transformer, Child et al., 2019) | block_topk
            (permuted block-sparse top-k, after PBS-Attn); see `seqlab.ops.sparse_attention`
        stride: ℓ of strided and fixed (null: ⌈√context⌉)
        context: the training length T that sets the default stride ⌈√T⌉
        summary: c of fixed, the summary positions at the end of every block of ℓ
        combine: how the two patterns A1, A2 meet: union (one merged head, the default),
            heads (even heads A1, odd heads A2) or layers (even layers A1, odd layers A2)
        block: b of block_topk, the block size of queries and keys
        segment: S of block_topk, the permutation segment (a multiple of block)
        keep_blocks: key blocks of earlier segments each query block keeps (besides its own
            segment and the block holding position 0)
    """

    pattern: str
    stride: int | None = None
    context: int | None = None
    summary: int = 1
    combine: str = "union"
    block: int = 16
    segment: int = 64
    keep_blocks: int = 4

    def __post_init__(self) -> None:
        what = "attention sparsity"
        if self.pattern not in PATTERNS:
            raise ConfigError(
                f"{what} pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}"
            )
        if self.pattern == "block_topk":
            if self.block < 1 or self.segment < self.block or self.segment % self.block:
                raise ConfigError(
                    f"{what} needs block >= 1 and segment a multiple of block, got block "
                    f"{self.block}, segment {self.segment}"
                )
            if self.keep_blocks < 0:
                raise ConfigError(f"{what} keep_blocks must be >= 0, got {self.keep_blocks}")
            return
        if self.stride is None:
            if self.context is None or self.context < 1:
                raise ConfigError(
                    f"{what} {self.pattern} needs stride, or context (stride = ⌈√context⌉)"
                )
            object.__setattr__(self, "stride", math.ceil(math.sqrt(self.context)))
        if self.stride < 1:
            raise ConfigError(f"{what} stride must be >= 1, got {self.stride}")
        if not 1 <= self.summary <= self.stride:
            raise ConfigError(f"{what} summary must lie in [1, stride], got {self.summary}")
        if self.combine not in COMBINES:
            raise ConfigError(
                f"{what} combine must be one of {', '.join(COMBINES)}, got {self.combine!r}"
            )


@dataclass
class KVCache:
    """Decode state: keys `[B, T_cache, H_kv, D]` and values `[B, T_cache, H_kv, D_v]`
    (D_v may differ from D, as in Mega), their positions `[B, T_cache]`
    (−1 marks padding no query may read), the next position of each row `[B]`, and, for
    the data-dependent `block_topk` sparsity (whose selection reads past queries), the
    queries `[B, T_cache, H, D]` (None otherwise).

    Rows may hold different numbers of entries (ragged prefills, per-row speculative
    acceptance): they are left-padded at position −1, which attention never reads; rotary
    angles come from each row's own positions and offset, so padding changes no output. The
    cache pads, concatenates and truncates itself (`seqlab.state.GrowingState`).
    """

    k: Tensor
    v: Tensor
    positions: Tensor
    offset: Tensor
    q: Tensor | None = None

    def _entries(
        self, fn: Callable[[Tensor], Tensor], positions: Tensor, offset: Tensor
    ) -> KVCache:
        """A cache with `fn` applied to every per-entry tensor but the positions."""
        q = None if self.q is None else fn(self.q)
        return KVCache(fn(self.k), fn(self.v), positions, offset, q)

    @classmethod
    def concat(cls, caches: Sequence[KVCache]) -> KVCache:
        """The rows of `caches` in order, each left-padded to the longest."""
        length = max(c.k.shape[1] for c in caches)
        padded = [c.pad_to(length) for c in caches]
        fields = ("k", "v", "positions", "offset") + (("q",) if caches[0].q is not None else ())
        return cls(**{f: torch.cat([getattr(c, f) for c in padded]) for f in fields})

    def pad_to(self, length: int) -> KVCache:
        """Left-pad to `length` entries with zeros at position −1."""
        missing = length - self.k.shape[1]
        if missing <= 0:
            return self
        b = self.k.shape[0]

        def pad(s: Tensor) -> Tensor:
            return torch.cat([s.new_zeros(b, missing, *s.shape[2:]), s], dim=1)

        positions = torch.cat([self.positions.new_full((b, missing), -1), self.positions], dim=1)
        return self._entries(pad, positions, self.offset)

    def drop_last(self, drop: Tensor | int) -> KVCache:
        """Forget the last `drop[i]` entries of row i (all rows wrote the same last columns).
        An int forgets as many in every row: rows are left-padded, so those are the last
        columns, sliced off without compacting."""
        if isinstance(drop, int):
            if drop == 0:
                return self
            return self._entries(
                lambda s: s[:, :-drop], self.positions[:, :-drop], self.offset - drop
            )
        drop = drop.to(self.offset.device)
        t = self.k.shape[1]
        column = torch.arange(t, device=drop.device)
        forget = column[None] >= (t - drop)[:, None]
        positions = self.positions.masked_fill(forget, -1)
        return dataclasses.replace(self, positions=positions, offset=self.offset - drop).compact()

    def keep_last(self, count: int) -> KVCache:
        """Only the newest `count` entry columns (a sliding context over a carried cache)."""
        start = max(self.k.shape[1] - count, 0)
        if start == 0:
            return self
        return self._entries(lambda s: s[:, start:], self.positions[:, start:], self.offset)

    def compact(self) -> KVCache:
        """Move each row's padding to the left (keeping the order of its entries) and drop
        the columns that are padding in every row."""
        valid = self.positions >= 0
        order = valid.to(torch.int8).argsort(dim=1, stable=True)
        keep = int(valid.sum(dim=1).max())
        order = order[:, order.shape[1] - keep :]
        rows = order[:, :, None, None]
        return self._entries(
            lambda s: s.gather(1, rows.expand(-1, -1, *s.shape[2:])),
            self.positions.gather(1, order),
            self.offset,
        )


@MIXERS.register("attention")
class Attention(Mixer):
    """Softmax attention (Vaswani et al., 2017) with grouped-query heads, rotary positions,
    an optional sliding window and a KV cache.

    o = softmax(q kᵀ / √D + mask) v with rotary positions on q and k.

    `n_kv_heads < n_heads` shares each key/value head across a group of query heads.
    `window` limits causal reads to the last `window` positions (the cache is trimmed to it).
    `sparsity: {pattern: strided|fixed|block_topk, ...}` (`Sparsity`) masks the causal
    softmax to a sparse set of keys: the Sparse Transformer's strided and fixed patterns, or
    permuted block-sparse top-k (`seqlab.ops.sparse_attention`); causal layout only; the
    decode cache then also keeps the queries for block_topk. Under sequence parallelism
    (`seqlab.sequence_parallel`) the causal, full-context forward runs
    `seqlab.ops.ring_attention` on this rank's shard. `attention_density(T)` is the
    fraction of causal (query, key) pairs read and `attention_mask(x)` the mask itself.
    `head_dim` sets the width D of each head (null: d_model / n_heads; q has H · D rows);
    `qkv_bias` and `out_bias` add biases to the q/k/v and the output projections (the
    options of Qwen2 and of Llama's `attention_bias`, for imported checkpoints).
    """

    layouts = ALL_LAYOUTS
    state_kind = "kv_cache"
    linear_in_values = True
    sequence_parallel = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        rope_theta: float = 10000.0,
        window: int | None = None,
        qk_norm: bool = False,
        sparsity: dict[str, Any] | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        layer: int = 0,
    ) -> None:
        super().__init__()
        self.sparsity = None
        if sparsity is not None:
            self.sparsity = from_dict(Sparsity, sparsity, "model.mixer_options.attention.sparsity.")
            if window is not None:
                raise ConfigError("attention takes a window or a sparsity pattern, not both")
            if self.sparsity.combine == "heads" and n_heads < 2:
                raise ConfigError("attention sparsity combine heads needs n_heads >= 2")
            self.layouts = CAUSAL_ONLY
        self.layer = layer
        self.d_model, self.n_heads = d_model, n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads if head_dim is None else head_dim
        if self.head_dim < 2 or self.head_dim % 2:
            raise ConfigError(
                f"attention head_dim must be even and >= 2 for rotary, got {self.head_dim}"
            )
        self.rope_theta, self.window = rope_theta, window
        self.q_dim = n_heads * self.head_dim
        kv_dim = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, self.q_dim + 2 * kv_dim, bias=qkv_bias)
        self.out = nn.Linear(self.q_dim, d_model, bias=out_bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        state: KVCache | BoundedKVCache | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | BoundedKVCache | None]:
        check_input(x, self.d_model)
        b, t, _ = x.shape
        shard = current_shard()
        if shard is not None:
            return self.out(self._sharded(x, state, layout, positions, shard)), None
        q, k, v, positions = self._heads(x, state, positions)
        if state is None:
            return self.out(self._attend(q, k, v, positions, layout).reshape(b, t, -1)), None
        if isinstance(state, BoundedKVCache):  # a bounded cache policy (`ops/kv_cache`)
            if layout.kind is not LayoutKind.CAUSAL:
                raise SeqlabError(f"a bounded kv_cache decodes the causal layout, got {layout}")
            o, bounded = state.policy.step(q, k, v, positions, state)
            return self.out(o.reshape(b, t, self.q_dim)), bounded

        k_all = torch.cat([state.k, k], dim=1)
        v_all = torch.cat([state.v, v], dim=1)
        k_pos = torch.cat([state.positions, positions], dim=1)
        q_all = None if state.q is None else torch.cat([state.q, q], dim=1)
        mask = self._mask(positions, k_pos, layout, state.k.shape[1], q_all, k_all)
        o = scaled_dot_product_attention(q, k_all, v_all, mask=mask)
        if self.window is not None and k_all.shape[1] > self.window:
            k_all, v_all, k_pos = (s[:, -self.window :] for s in (k_all, v_all, k_pos))
        new_state = KVCache(k_all, v_all, k_pos, positions[:, -1] + 1, q_all)
        return self.out(o.reshape(b, t, self.q_dim)), new_state

    def check_sequence_parallel(self, shard: SequenceShard) -> None:
        """A one-line ConfigError if this layer cannot run under `shard`."""
        if self.window is not None or self.sparsity is not None:
            raise ConfigError(
                "train.sequence_parallel supports attention without window or sparsity"
            )
        if shard.attention == "ulysses":
            check_ulysses_heads(self.n_heads, self.n_kv_heads, shard.size)

    def _sharded(
        self,
        x: Tensor,
        state: KVCache | BoundedKVCache | None,
        layout: Layout,
        positions: Tensor | None,
        shard: SequenceShard,
    ) -> Tensor:
        """This rank's attention output `[B, T_r, H · D]` of a sequence split across ranks
        (rotary at the global `positions`; the causal mask by global column)."""
        if state is not None or layout != Layout.CAUSAL:
            raise SeqlabError(
                "attention runs under sequence parallelism causally and without a cache "
                f"(got layout {layout.kind.value!r})"
            )
        self.check_sequence_parallel(shard)
        b, t, _ = x.shape
        if positions is None:
            positions = shard.start + torch.arange(t, device=x.device)
        q, k, v, _ = self._heads(x, None, positions)
        bounds = shard_columns(shard, t)
        o = sharded_attention(q, k, v, bounds, shard.rank, shard.group, shard.attention)
        return o.reshape(b, t, self.q_dim)

    def _heads(
        self, x: Tensor, state: KVCache | None, positions: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q `[B, T, H, D]`, k and v `[B, T, H_kv, D]` (q and k rotated) and the positions."""
        b, t, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qk, v = self.qkv(x).split([self.q_dim + h_kv * d, h_kv * d], dim=-1)
        v = v.view(b, t, h_kv, d)
        if positions is None and state is None:  # positions 0..t-1 of every row
            positions = torch.arange(t, device=x.device)[None]
            cos, sin = arange_rotary_angles(t, d, self.rope_theta, qk.dtype, x.device)
        else:
            positions = self._positions(positions, state, b, t, x.device)
            cos, sin = rotary_angles(positions, d, self.rope_theta, dtype=qk.dtype)
        if isinstance(self.q_norm, nn.Identity):
            # q and k heads side by side: one rotary pass over both, then views into it
            qk = apply_rotary(qk.view(b, t, h + h_kv, d), cos, sin)
            q, k = qk.split([h, h_kv], dim=2)
        else:
            q, k = qk.split([self.q_dim, h_kv * d], dim=-1)
            q = apply_rotary(self.q_norm(q.view(b, t, h, d)), cos, sin)
            k = apply_rotary(self.k_norm(k.view(b, t, h_kv, d)), cos, sin)
        return q, k, v, positions

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, layout: Layout) -> Tensor:
        """softmax(q kᵀ / √D + mask) v `[B, T, H, D]` over the new tokens alone."""
        if layout.is_causal and self.window is None and self.sparsity is None:
            return scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = self._mask(positions, positions, layout, 0, q, k)
        return scaled_dot_product_attention(q, k, v, mask=mask)

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """The values v repeated to every query head of their group `[B, T, H, D]`; the
        matrix is each query head's softmax probabilities (window included)."""
        q, k, v, positions = self._heads(x, None, None)
        output = self._attend(q, k, v, positions, Layout.CAUSAL)
        mask = self._mask(positions, positions, Layout.CAUSAL, 0, q, k)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=2)

        def value_map(values: Tensor) -> Tensor:
            return attention_reference(q, k, values, mask=mask)

        return v.repeat_interleave(group, dim=2), output, value_map

    def _positions(
        self, positions: Tensor | None, state: KVCache | None, b: int, t: int, device: torch.device
    ) -> Tensor:
        """Positions `[B, T]`; `[1, T]` when every row shares them and no cache is kept, so
        rotary angles and masks are formed once and broadcast over the batch."""
        if positions is None:
            if state is None:
                return torch.arange(t, device=device)[None]
            return state.offset[:, None] + torch.arange(t, device=device)
        if positions.dim() == 1 and positions.shape[0] == t:
            positions = positions[None] if state is None else positions[None].expand(b, -1)
            return positions.to(device)
        if positions.shape != (b, t):
            raise ShapeError(
                f"positions must have shape [{t}] or [{b}, {t}], got {list(positions.shape)}"
            )
        return positions.to(device)

    def _mask(
        self,
        q_pos: Tensor,
        k_pos: Tensor,
        layout: Layout,
        n_cached: int,
        queries: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """Boolean `[B, 1 or H, T_q, T_k]`: cached keys are readable (unless padding or
        outside the window); among the new tokens the layout decides; a sparsity pattern
        then keeps its pairs (block_topk reads every query and key so far: `queries`
        `[B, T_k, H, D]` and `keys` `[B, T_k, H_kv, D]`, cache first)."""
        t = q_pos.shape[1]
        if self.sparsity is not None and layout.kind is not LayoutKind.CAUSAL:
            raise SeqlabError(
                f"attention with sparsity supports the causal layout only, got {layout}"
            )
        valid = (k_pos >= 0)[:, None, :]
        if layout.kind is LayoutKind.CAUSAL:
            new = torch.ones(t, t, dtype=torch.bool, device=q_pos.device).tril()
        elif layout.kind is LayoutKind.BIDIRECTIONAL:
            new = torch.ones(t, t, dtype=torch.bool, device=q_pos.device)
        elif layout.kind is LayoutKind.BLOCK_CAUSAL:
            new = block_causal_mask(t, layout.block_size, device=q_pos.device)
        else:
            if n_cached or t % 2:
                raise SeqlabError(
                    "the block_diffusion layout takes the whole [x_t ; x_0] "
                    "sequence (even length) and no state"
                )
            new = block_diffusion_mask(t // 2, layout.block_size, device=q_pos.device)
        cached = torch.ones(t, n_cached, dtype=torch.bool, device=q_pos.device)
        mask = torch.cat([cached, new], dim=1)[None] & valid
        if self.window is not None and layout.is_causal:
            mask &= (q_pos[:, :, None] - k_pos[:, None, :]) < self.window
        if self.sparsity is None:
            return mask[:, None]
        if self.sparsity.pattern == "block_topk":
            assert queries is not None and keys is not None
            return mask[:, None] & self._block_topk_mask(q_pos, k_pos, queries, keys)
        return mask[:, None] & self._pattern_mask(q_pos, k_pos)

    def _pattern_mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The Sparse Transformer pattern `[B, 1 or H, T_q, T_k]` of this layer's heads."""
        sp = self.sparsity
        assert sp is not None and sp.stride is not None

        def part(p: int) -> Tensor:
            return sparse_transformer_mask(q_pos, k_pos, sp.pattern, sp.stride, sp.summary, p)

        if sp.combine == "union":
            return part(0)[:, None]
        if sp.combine == "layers":
            return part(1 + self.layer % 2)[:, None]
        both = torch.stack([part(1), part(2)], dim=1)  # [B, 2, T_q, T_k]
        return both[:, torch.arange(self.n_heads, device=both.device) % 2]

    def _block_topk_mask(
        self, q_pos: Tensor, k_pos: Tensor, queries: Tensor, keys: Tensor
    ) -> Tensor:
        """`block_topk_mask` over each row's tokens laid out by position (cache padding at
        position −1 goes nowhere), read back at the queries' and keys' columns:
        `[B, H, T_q, T_k]`. Rows must hold positions 0, 1, 2, ... (the default positions)."""
        sp = self.sparsity
        assert sp is not None
        b = queries.shape[0]
        k_pos, q_pos = k_pos.expand(b, -1), q_pos.expand(b, -1)
        valid = k_pos >= 0
        length = int(k_pos.max()) + 1
        if bool((valid.sum(1) != k_pos.amax(1) + 1).any()):
            raise SeqlabError(
                "attention block_topk sparsity needs each row's positions to run 0, 1, 2, ..."
            )
        slot = torch.where(valid, k_pos, length)

        def by_position(s: Tensor) -> Tensor:
            index = slot[:, :, None, None].expand_as(s)
            return s.new_zeros(b, length + 1, *s.shape[2:]).scatter(1, index, s)[:, :length]

        full = block_topk_mask(
            by_position(queries),
            by_position(keys),
            block=sp.block,
            segment=sp.segment,
            keep=sp.keep_blocks,
        )  # [B, H, L, L]
        h = full.shape[1]
        rows = full.gather(2, q_pos[:, None, :, None].expand(-1, h, -1, length))
        columns = slot.clamp(max=length - 1)[:, None, None, :].expand(-1, h, q_pos.shape[1], -1)
        return rows.gather(3, columns) & valid[:, None, None, :]

    def attention_mask(self, x: Tensor) -> Tensor:
        """The boolean mask `[B, H, T, T]` the causal forward applies to input `x`
        (the sparsity pattern, data-dependent for block_topk, within causal attention)."""
        check_input(x, self.d_model)
        b, t, _ = x.shape
        q, k, _, positions = self._heads(x, None, None)
        mask = self._mask(positions, positions, Layout.CAUSAL, 0, q, k)
        return mask.expand(b, self.n_heads, t, t)

    def attention_density(self, seq_len: int) -> float:
        """The fraction of causal (query, key) pairs this layer reads over a sequence of
        `seq_len` tokens, averaged over heads. Exact for dense, window and the Sparse
        Transformer patterns; for block_topk an upper bound, exact unless the top blocks
        hold the sink block: each query reads its own segment up to itself and
        `block` · min(keep_blocks + 1, blocks before its segment) keys."""
        t = seq_len
        causal = t * (t + 1) / 2
        pos = torch.arange(t)
        sp = self.sparsity
        if sp is None:
            if self.window is None:
                return 1.0
            return float((pos + 1).clamp(max=self.window).sum()) / causal
        if sp.pattern == "block_topk":
            segment_start = (pos // sp.segment) * sp.segment
            earlier_blocks = segment_start // sp.block
            kept = (
                pos - segment_start + 1 + sp.block * (earlier_blocks.clamp(max=sp.keep_blocks + 1))
            )
            return float(kept.sum()) / causal
        read = 0
        for rows in pos.split(1024):
            read += (
                int(self._pattern_mask(rows[None], pos[None]).sum())
                / self._pattern_mask(rows[None, :1], pos[None, :1]).shape[1]
            )
        return read / causal

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        shape = (batch_size, 0, self.n_kv_heads, self.head_dim)
        empty = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        queries = None
        if self._keeps_queries:
            queries = empty.new_zeros(batch_size, 0, self.n_heads, self.head_dim)
        return KVCache(
            empty,
            empty.clone(),
            torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            torch.zeros(batch_size, dtype=torch.long, device=device),
            queries,
        )

    def bounded_state(self, policy: KVPolicy, state: KVCache) -> BoundedKVCache:
        """The empty decode state `state` (from `init_state`) bounded by a KV cache policy
        (`seqlab.ops.kv_cache`): full causal attention only."""
        if self.window is not None or self.sparsity is not None:
            raise ConfigError("a kv_cache policy bounds full attention, not a window or sparsity")
        return policy.init_state(state.k, state.v, state.offset)

    @property
    def _keeps_queries(self) -> bool:
        return self.sparsity is not None and self.sparsity.pattern == "block_topk"

    def state_size(self, seq_len: int) -> int:
        kept = seq_len if self.window is None else min(seq_len, self.window)
        queries = self.n_heads * self.head_dim * kept if self._keeps_queries else 0
        return 2 * self.n_kv_heads * self.head_dim * kept + queries

    def mixing_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token of q·kᵀ and p·v over the pairs read (a sparse kernel's
        count: `attention_density` of the causal pairs), averaged over a causal sequence;
        block_topk adds its selection: the permutation scores (the last `block` queries of
        each segment against its keys) and the block-mean scores of each query block."""
        if self.sparsity is None and self.window is not None:
            return 4.0 * self.q_dim * min(self.window, (seq_len + 1) / 2)
        flops = 4.0 * self.q_dim * self.attention_density(seq_len) * (seq_len + 1) / 2
        if self._keeps_queries:
            assert self.sparsity is not None
            block = self.sparsity.block
            flops += 2.0 * self.q_dim * (block + seq_len / (2 * block * block))
        return flops
