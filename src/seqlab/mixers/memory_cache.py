"""Memory caching (Behrouz et al., 2026): a matrix-state mixer whose memory grows by one
cached state per segment, read beside the live state."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.config import check_option_types
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import CAUSAL_ONLY, Layout
from seqlab.mixers.base import Mixer, check_input
from seqlab.state import State, map_state

MODES = ("residual", "gated", "soup", "sparse")


@dataclass
class SegmentCache:
    """The cached part of the decode state (a `seqlab.state.GrowingState`).

    `memories` `[B, n, H, K, V]`: the states cached at segment ends; `keys` `[B, n, H, K]`:
    each cached segment's mean key (gated and sparse modes, else None); `valid` `[B, n]`:
    which columns hold a memory (rows may cache at different steps: a column is padding in
    the rows that did not); `key_sum` `[B, H, K]`: the keys of the current segment so far
    (None without keys); `position` `[B]`: the tokens of the current segment seen so far.
    Every mode is symmetric in the memories, so padding may sit in any column.
    """

    memories: Tensor
    keys: Tensor | None
    valid: Tensor
    key_sum: Tensor | None
    position: Tensor

    @classmethod
    def concat(cls, caches: Sequence[SegmentCache]) -> SegmentCache:
        """The rows of `caches` in order, each padded to the most columns."""
        length = max(c.valid.shape[1] for c in caches)
        padded = [c.pad_to(length) for c in caches]

        def cat(field: str) -> Tensor | None:
            parts = [getattr(c, field) for c in padded]
            return None if parts[0] is None else torch.cat(parts)

        return cls(*(cat(f) for f in ("memories", "keys", "valid", "key_sum", "position")))

    def pad_to(self, length: int) -> SegmentCache:
        """Padded with `length − n` invalid zero columns."""
        missing = length - self.valid.shape[1]
        if missing <= 0:
            return self

        def pad(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            return torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], dim=1)

        return SegmentCache(
            pad(self.memories), pad(self.keys), pad(self.valid), self.key_sum, self.position
        )

    def drop_last(self, drop: Tensor | int) -> SegmentCache:
        raise SeqlabError(
            "a memory cache cannot forget tokens by itself; re-run them from a saved state"
        )

    def append(self, memory: Tensor, key: Tensor | None, rows: Tensor) -> SegmentCache:
        """One more column: `memory` `[B, H, K, V]` (and mean `key` `[B, H, K]`) for `rows`."""
        keys = None if key is None else torch.cat([self.keys, key[:, None]], dim=1)
        return SegmentCache(
            torch.cat([self.memories, memory[:, None]], dim=1),
            keys,
            torch.cat([self.valid, rows[:, None]], dim=1),
            self.key_sum,
            self.position,
        )


@dataclass
class MemoryCacheState:
    """`inner`: the wrapped mixer's state; `cache`: the cached memories (`SegmentCache`)."""

    inner: State
    cache: SegmentCache


class MemoryCache(Mixer):
    """Memory caching (Behrouz et al., 2026, "Memory Caching: RNNs with Growing Memory") around
    a matrix-state mixer whose kernel output is a plain read o_t = q̃_tᵀ S_t (q̃: the query
    as the kernel scales it, e.g. q/√K).

    The sequence is cut into segments of `segment` tokens. The state at the end of segment i
    is cached as M^(i), with the segment's mean key k̄^(i) (the mean of the keys the mixer
    wrote with). A token t of segment j reads the live state S_t (which still carries the
    whole past, as in the mixer alone) and the cached memories of the segments before its
    own, i < j; with c = j cached memories, before the mixer's output norm, gate and
    projection:

        residual:  o_t = q̃ᵀS_t + Σ_{i<j} q̃ᵀM^(i)
        gated:     o_t = q̃ᵀS_t + Σ_{i<j} w_i(t) q̃ᵀM^(i),  w(t) = softmax_{i<j}(q̃_t·k̄^(i))
        soup:      o_t = q̃ᵀ (S_t + Σ_{i<j} M^(i)) / (c + 1)   (the read of the averaged state)
        sparse:    as gated over the `top_k` cached segments with the highest q̃_t·k̄^(i),
                   the softmax taken over those only

    With no cached memory (t < segment) every mode is the mixer alone. The paper's gate
    projects the input (⟨W_u x_t, mean-pooled segment⟩); here the mixer's own query and
    keys score the segments, which adds no parameters. Its soup averages the memories with
    the gate weights (for linear memories the same function as gated); here the average is
    uniform and includes the live state, so the four modes differ.

    Shapes: q̃, k `[B, T, H, K]`; memories `[B, n, H, K, V]`, n = ⌊T / segment⌋ after T
    tokens; scores and weights `[B, T, H, n]`. The parallel form takes the state entering
    every segment from one chunked-kernel call (its chunk states), then every token's cached
    reads as one batched matmul over (memories × K); a token's own segment reaches it
    through the live state only, so the layer stays causal. The decode state adds the cached
    memories (and mean keys), growing by one per segment (`state_size`), to the mixer's own.
    Layouts: causal only.
    """

    layouts = CAUSAL_ONLY
    state_kind = "kv_cache"
    sequence_parallel = False  # its forward would recur from zero on every shard
    sequence_parallel_refusal = (
        "its cached segment memories are not exchanged between the ranks' shards"
    )

    def __init__(
        self, inner: Mixer, *, segment: int = 64, mode: str = "residual", top_k: int | None = None
    ) -> None:
        super().__init__()
        what = f"{inner.name} memory_cache"
        if not isinstance(segment, int) or isinstance(segment, bool) or segment < 1:
            raise ConfigError(f"{what} segment must be an integer >= 1, got {segment!r}")
        if mode not in MODES:
            raise ConfigError(f"{what} mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "sparse" and (top_k is None or top_k < 1):
            raise ConfigError(f"{what} mode sparse needs top_k >= 1, got {top_k!r}")
        if mode != "sparse" and top_k is not None:
            raise ConfigError(f"{what} top_k is an option of mode sparse, not {mode}")
        self.inner, self.segment, self.mode, self.top_k = inner, segment, mode, top_k
        self.name = f"{inner.name}+memory_cache"
        self.d_model, self.heads = inner.d_model, inner.heads
        self.keyed = mode in ("gated", "sparse")

    @classmethod
    def around(cls, inner: Mixer, options: Any) -> MemoryCache:
        """The wrapper from the `memory_cache` option (a mapping of this constructor's
        keyword options), checked by name and type."""
        prefix = f"model.mixer_options.{inner.name}.memory_cache"
        if not isinstance(options, dict):
            raise ConfigError(f"{prefix} must be a mapping (segment, mode, top_k), got {options!r}")
        params = {
            n: p for n, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY
        }
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} in {prefix}; valid: {', '.join(params)}"
            )
        checked = check_option_types(params, options, cls.__init__.__globals__, f"{prefix}.")
        return cls(inner, **checked)

    def init_weights(self, std: float, out_std: float) -> None:
        self.inner.init_weights(std, out_std)

    def forward(
        self,
        x: Tensor,
        state: MemoryCacheState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, MemoryCacheState | None]:
        check_input(x, self.d_model)
        if not layout.is_causal:
            raise SeqlabError(f"{self.name} supports the causal layout only, got {layout}")
        inputs, gate = self.inner._project(x)
        if state is None:
            o, _ = self._run(inputs, None, None)
            return self.inner._output(o, gate), None
        inner, cache = state.inner, state.cache
        if x.shape[1] > 1 and bool((cache.position != cache.position[0]).any()):
            # Rows part-way through different segments (after ragged feeding): token by token.
            outputs = []
            for t in range(x.shape[1]):
                o, (inner, cache) = self._run(tuple(u[:, t : t + 1] for u in inputs), inner, cache)
                outputs.append(o)
            o = torch.cat(outputs, dim=1)
        else:
            o, (inner, cache) = self._run(inputs, inner, cache)
        return self.inner._output(o, gate), MemoryCacheState(inner, cache)

    def _run(
        self, inputs: tuple[Tensor, ...], inner: State | None, cache: SegmentCache | None
    ) -> tuple[Tensor, tuple[State | None, SegmentCache | None]]:
        """Kernel outputs with the cached reads added, from rows all at one segment position
        (any position for one token): the rest of the current segment, then whole ones."""
        steps = inputs[0].shape[1]
        position = 0 if cache is None else int(cache.position.max())
        if position == 0 and steps > self.segment:
            return self._aligned(inputs, inner, cache)
        head = min(steps, self.segment - position)
        o, (inner, cache) = self._within(tuple(u[:, :head] for u in inputs), inner, cache)
        if head == steps:
            return o, (inner, cache)
        rest, (inner, cache) = self._run(tuple(u[:, head:] for u in inputs), inner, cache)
        return torch.cat([o, rest], dim=1), (inner, cache)

    def _within(
        self, inputs: tuple[Tensor, ...], inner: State | None, cache: SegmentCache | None
    ) -> tuple[Tensor, tuple[State | None, SegmentCache | None]]:
        """Tokens that stay inside one segment of every row (the last may end it): each reads
        the cache as it stands; the live state is the mixer's own."""
        o, new_inner = self.inner._recur(inputs, inner)
        if cache is None:
            return o, (None, None)
        q, k = self.inner._read_inputs(inputs, inner)
        visible = cache.valid[:, None].expand(-1, q.shape[1], -1)
        o = self._combine(o, q, cache.memories, cache.keys, visible)
        position = cache.position + q.shape[1]
        key_sum = None if cache.key_sum is None else cache.key_sum + k.sum(1)
        cache = SegmentCache(cache.memories, cache.keys, cache.valid, key_sum, position)
        ended = position == self.segment
        if bool(ended.any()):
            mean = None if key_sum is None else key_sum / self.segment
            cache = cache.append(new_inner.recurrent, mean, ended)
            cache.position = torch.where(ended, 0, position)
            if key_sum is not None:
                cache.key_sum = torch.where(ended[:, None, None], 0, key_sum)
        return o, (new_inner, cache)

    def _aligned(
        self, inputs: tuple[Tensor, ...], inner: State | None, cache: SegmentCache | None
    ) -> tuple[Tensor, tuple[State | None, SegmentCache | None]]:
        """Tokens from a segment start (every row): the states entering each segment from one
        chunked call (chunk = segment, or its largest power-of-two divisor for kernels that
        need one), the segment keys, and every token's reads of the memories before its
        segment."""
        batch, steps = inputs[0].shape[:2]
        n = -(-steps // self.segment)
        chunk = self.segment
        if self.inner.power_of_two_blocks:
            chunk = self.segment & -self.segment
        every = self.segment // chunk
        start = inner
        if start is None:
            start = self.inner.init_state(batch, device=inputs[0].device, dtype=inputs[0].dtype)
        o, starts = self.inner._recur(inputs, start, boundaries=chunk)
        blocks = -(-steps // chunk)
        entering = starts.recurrent.unflatten(0, (batch, blocks))[:, ::every]  # [B, n, H, K, V]
        q, k = self.inner._read_inputs(inputs, start)
        pad = n * self.segment - steps
        key_sums = F.pad(k, (0, 0, 0, 0, 0, pad)).unflatten(1, (n, self.segment)).sum(2)
        memories = entering[:, 1:]
        keys = key_sums[:, :-1] / self.segment if self.keyed else None
        valid = memories.new_ones(batch, n - 1, dtype=torch.bool)
        own = torch.arange(steps, device=q.device) // self.segment  # each token's segment
        visible = (torch.arange(n - 1, device=q.device) < own[:, None]).expand(batch, -1, -1)
        if cache is not None:
            memories = torch.cat([cache.memories, memories], dim=1)
            keys = None if keys is None else torch.cat([cache.keys, keys], dim=1)
            old = cache.valid[:, None].expand(-1, steps, -1)
            visible = torch.cat([old, visible], dim=2)
            valid = torch.cat([cache.valid, valid], dim=1)
        o = self._combine(o, q, memories, keys, visible)
        if cache is None:
            return o, (None, None)
        last = map_state(lambda t: t.unflatten(0, (batch, blocks))[:, (n - 1) * every], starts)
        tail = steps - (n - 1) * self.segment
        _, new_inner = self.inner._recur(tuple(u[:, -tail:] for u in inputs), last)
        key_sum = key_sums[:, -1] if self.keyed else None
        position = torch.full_like(cache.position, tail)
        cache = SegmentCache(memories, keys, valid, key_sum, position)
        if tail == self.segment:
            mean = None if key_sum is None else key_sum / self.segment
            cache = cache.append(new_inner.recurrent, mean, torch.ones_like(cache.valid[:, 0]))
            cache.position = torch.zeros_like(position)
            cache.key_sum = None if key_sum is None else torch.zeros_like(key_sum)
        return o, (new_inner, cache)

    def _combine(
        self, o: Tensor, q: Tensor, memories: Tensor, keys: Tensor | None, visible: Tensor
    ) -> Tensor:
        """The live output `o` `[B, T, H, V]` with the cached reads: q̃ `[B, T, H, K]`,
        memories `[B, n, H, K, V]`, keys `[B, n, H, K]`, `visible` `[B, T, n]` (which
        memories each token reads)."""
        if memories.shape[1] == 0:
            return o
        memories = memories.to(q.dtype)
        mask = visible[:, :, None].expand(-1, -1, q.shape[2], -1)  # [B, T, H, n]
        if self.keyed:
            scores = torch.einsum("bthk,bnhk->bthn", q, keys.to(q.dtype))
            if self.mode == "sparse":
                floor = torch.finfo(scores.dtype).min
                top = scores.masked_fill(~mask, floor).topk(
                    min(self.top_k, scores.shape[-1]), dim=-1
                )
                chosen = torch.zeros_like(mask).scatter(-1, top.indices, True)
                mask = mask & chosen
            weights = masked_softmax(scores, mask)
        else:
            weights = mask.to(q.dtype)
        weighted = (weights[..., None] * q[..., None, :]).flatten(3)  # [B, T, H, n·K]
        cached = torch.einsum("bthj,bhjv->bthv", weighted, memories.movedim(1, 2).flatten(2, 3))
        if self.mode == "soup":
            count = visible.sum(-1).to(q.dtype)[:, :, None, None]
            return (o + cached) / (count + 1)
        return o + cached

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MemoryCacheState:
        inner = self.inner.init_state(batch_size, device=device, dtype=dtype)
        s = inner.recurrent
        key_shape = (batch_size, self.heads, s.shape[-2])
        cache = SegmentCache(
            s.new_zeros(batch_size, 0, *s.shape[1:]),
            s.new_zeros(batch_size, 0, *key_shape[1:]) if self.keyed else None,
            torch.zeros(batch_size, 0, dtype=torch.bool, device=s.device),
            s.new_zeros(key_shape) if self.keyed else None,
            torch.zeros(batch_size, dtype=torch.long, device=s.device),
        )
        return MemoryCacheState(inner, cache)

    def _memory_numbers(self) -> tuple[int, int]:
        """(numbers per cached memory, numbers kept whatever the length), per sequence."""
        k, v = self.inner.state_k, self.inner.state_v
        key = self.heads * k if self.keyed else 0
        return self.heads * k * v + key, key

    def state_size(self, seq_len: int) -> int:
        """The mixer's state, plus per cached segment (⌊T / segment⌋ of them) H·K·V (and
        H·K for its mean key in gated and sparse modes), plus the current segment's key sum
        H·K in those modes."""
        per_memory, fixed = self._memory_numbers()
        return self.inner.state_size(seq_len) + fixed + (seq_len // self.segment) * per_memory

    def mixing_flops(self, seq_len: int) -> float:
        """The mixer's, plus each token's reads of the memories before its segment, on
        average (T / segment − 1) / 2 of them: 2K·V each (and 2K for its score in gated and
        sparse modes), per head."""
        k, v = self.inner.state_k, self.inner.state_v
        memories = max(seq_len / self.segment - 1, 0.0) / 2
        per_memory = 2.0 * k * v + (2.0 * k if self.keyed else 0.0)
        return self.inner.mixing_flops(seq_len) + self.heads * memories * per_memory


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """softmax over the last axis among `mask`ed entries, 0 elsewhere (all 0 where a row has
    none), without a NaN in the value or its gradient."""
    floor = torch.finfo(scores.dtype).min
    return torch.softmax(scores.masked_fill(~mask, floor), dim=-1) * mask


def memory_cache_reference(mixer: MemoryCache, x: Tensor) -> Tensor:
    """The step-by-step reference: token by token through the mixer's recurrence (from its
    zero state), caching the state and mean key at every segment end, each token's read
    written per memory as in `MemoryCache`'s equations (the soup as the read of the averaged
    state). `x [B, T, d_model]` -> `y [B, T, d_model]`."""
    inner: Any = mixer.inner
    inputs, gate = inner._project(x)
    state = inner.init_state(x.shape[0], dtype=x.dtype)
    memories: list[Tensor] = []
    keys: list[Tensor] = []
    segment_keys: list[Tensor] = []
    outputs = []
    for t in range(x.shape[1]):
        token = tuple(u[:, t : t + 1] for u in inputs)
        q, k = (u[:, 0] for u in inner._read_inputs(token, state))  # [B, H, K]
        o, state = inner._recur(token, state)
        o = o[:, 0]
        live = state.recurrent.to(q.dtype)
        reads = [torch.einsum("bhk,bhkv->bhv", q, m.to(q.dtype)) for m in memories]
        if mixer.mode == "residual":
            o = o + sum(reads, torch.zeros_like(o))
        elif mixer.mode == "soup":
            average = (live + sum(m.to(q.dtype) for m in memories)) / (len(memories) + 1)
            o = torch.einsum("bhk,bhkv->bhv", q, average)
        elif memories:
            scores = torch.stack([(q * key).sum(-1) for key in keys], dim=-1)  # [B, H, n]
            chosen = torch.ones_like(scores, dtype=torch.bool)
            if mixer.mode == "sparse":
                top = scores.topk(min(mixer.top_k, len(memories)), dim=-1).indices
                chosen = torch.zeros_like(chosen).scatter(-1, top, True)
            weights = masked_softmax(scores, chosen)
            for i, read in enumerate(reads):
                o = o + weights[..., i, None] * read
        outputs.append(o)
        segment_keys.append(k)
        if (t + 1) % mixer.segment == 0:
            memories.append(state.recurrent)
            keys.append(torch.stack(segment_keys).mean(0))
            segment_keys = []
    return inner._output(torch.stack(outputs, dim=1), gate)
