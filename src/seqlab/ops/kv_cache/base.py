"""Bounded KV caches: the policy interface, the bounded decode state and the shared step.

A policy keeps at most `budget` key/value entries per key/value head between decode steps
(InfLLM: attends to at most `budget`, the rest stored as block memory). One step of c new
tokens (c = 1 when decoding; a prompt runs in chunks of `chunk` tokens):

    read   = policy.readable(cache, q)                       (cache entries, + retrieved blocks)
    o_t    = Σ_n softmax_n(q_t·k_n / √D + log c_n) v_n       over read ∪ new, k_pos ≤ t
    cache' = policy.compress(cache ∪ new, with attention mass added to each entry's score)

c_n is the number of tokens entry n stands for (1 for a token, the cluster size for a
centroid, 0 for an empty slot), so a cluster of identical keys whose values are averaged
gives exactly the attention over its tokens. Keys are cached after rotary, so keeping or
dropping entries never shifts the positions of the kept ones, and queries keep their true
positions. The cache is a fixed number of slots (empty ones at position −1), so rows stack,
reorder and clone like any fixed state.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError

if TYPE_CHECKING:
    from seqlab.model import Model

POLICIES: dict[str, type[KVPolicy]] = {}
EXACT = "exact"


def register(name: str) -> Any:
    """Class decorator: a policy found by `name` in `kv_cache: {policy: name}`."""

    def decorate(cls: type[KVPolicy]) -> type[KVPolicy]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return decorate


class Entries(NamedTuple):
    """Cache entries, per key/value head: k `[B, N, H, D]`, v `[B, N, H, D_v]`, positions
    `[B, N, H]` (−1: empty), count `[B, N, H]` (tokens an entry stands for; 0: empty) and
    score `[B, N, H]` (attention mass received so far)."""

    k: Tensor
    v: Tensor
    positions: Tensor
    count: Tensor
    score: Tensor

    def cat(self, other: Entries) -> Entries:
        return Entries(*(torch.cat([a, b], dim=1) for a, b in zip(self, other, strict=True)))

    def gather(self, index: Tensor) -> Entries:
        """Entries `index [B, n, H]` of each row and head."""
        return Entries(
            *(
                s.gather(
                    1,
                    index.reshape(*index.shape, *[1] * (s.dim() - 3)).expand(
                        *index.shape, *s.shape[3:]
                    ),
                )
                for s in self
            )
        )

    def pad_to(self, slots: int) -> Entries:
        """At least `slots` entries: empty ones appended."""
        missing = slots - self.k.shape[1]
        if missing <= 0:
            return self
        return self.cat(empty_entries(self.k, self.v, missing))


def empty_entries(k: Tensor, v: Tensor, n: int) -> Entries:
    """`n` empty entries per row and head, shaped like k `[B, ·, H, D]` and v."""
    b, _, h, d = k.shape
    return Entries(
        k.new_zeros(b, n, h, d),
        v.new_zeros(b, n, h, v.shape[-1]),
        torch.full((b, n, h), -1, dtype=torch.long, device=k.device),
        k.new_zeros(b, n, h),
        k.new_zeros(b, n, h),
    )


@dataclass
class BlockMemory:
    """InfLLM's distant context: M blocks of S entries per key/value head, k `[B, M, H, S, D]`,
    v `[B, M, H, S, D_v]`, positions `[B, M, H, S]` (−1: an empty block) and R representative
    keys per block `[B, M, H, R, D]`. Rows with fewer blocks are padded with empty ones."""

    k: Tensor
    v: Tensor
    positions: Tensor
    representatives: Tensor

    @classmethod
    def concat(cls, items: Sequence[BlockMemory]) -> BlockMemory:
        length = max(m.k.shape[1] for m in items)
        padded = [m.pad_to(length) for m in items]
        return cls(*(torch.cat([getattr(m, f) for m in padded]) for f in _BLOCK_FIELDS))

    def pad_to(self, length: int) -> BlockMemory:
        missing = length - self.k.shape[1]
        if missing <= 0:
            return self

        def pad(s: Tensor, fill: int = 0) -> Tensor:
            extra = s.new_full((s.shape[0], missing, *s.shape[2:]), fill)
            return torch.cat([s, extra], dim=1)

        return BlockMemory(
            pad(self.k), pad(self.v), pad(self.positions, -1), pad(self.representatives)
        )

    def drop_last(self, drop: Tensor | int) -> BlockMemory:
        raise SeqlabError("an InfLLM block memory cannot forget its newest tokens")


_BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockMemory))


@dataclass
class BoundedKVCache:
    """The decode state of an attention layer under a bounded policy: `slots` entries per
    key/value head (`Entries` fields k, v, positions, count, score), the next position of
    each row `offset [B]`, the policy (a plain leaf carried along) and InfLLM's block memory
    (None for the other policies)."""

    k: Tensor
    v: Tensor
    positions: Tensor
    count: Tensor
    score: Tensor
    offset: Tensor
    policy: KVPolicy
    memory: BlockMemory | None = None

    @property
    def entries(self) -> Entries:
        return Entries(self.k, self.v, self.positions, self.count, self.score)

    def held(self) -> Tensor:
        """Entries held per row and key/value head `[B, H]` (block memory not counted)."""
        return (self.count > 0).sum(dim=1)


def attend(q: Tensor, read: Entries, q_pos: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """o_t = Σ_n softmax_n(scale · q_t·k_n + log c_n) v_n over the entries with c_n > 0 and
    position ≤ q_pos[t]. q `[B, T, H_q, D]` (H_q a multiple of H: grouped-query heads),
    `read` `[B, N, H, ·]`, q_pos `[B or 1, T]`. Returns o `[B, T, H_q, D_v]` and each entry's
    attention mass summed over the T queries and the query heads of its group `[B, N, H]`."""
    b, t, hq, d = q.shape
    h = read.k.shape[2]
    scores = torch.einsum("bthgd,bnhd->bhgtn", q.view(b, t, h, hq // h, d), read.k) * scale
    count = read.count.permute(0, 2, 1)[:, :, None, None, :]
    k_pos = read.positions.permute(0, 2, 1)[:, :, None, None, :]
    visible = (count > 0) & (k_pos <= q_pos[:, None, None, :, None])
    scores = scores + torch.where(count > 0, count, 1.0).log()
    p = scores.masked_fill(~visible, -math.inf).softmax(dim=-1)
    o = torch.einsum("bhgtn,bnhd->bthgd", p, read.v).reshape(b, t, hq, read.v.shape[-1])
    return o, p.sum(dim=(2, 3)).permute(0, 2, 1)


def keep_top(e: Entries, priority: Tensor, slots: int) -> Entries:
    """The `slots` entries of highest `priority [B, N, H]` per row and head (empty entries
    last; ties to the earlier entry), in their original order."""
    e = e.pad_to(slots)
    priority = torch.nn.functional.pad(
        priority.double(), (0, 0, 0, e.k.shape[1] - priority.shape[1])
    )
    priority = priority.masked_fill(e.count <= 0, -math.inf)
    order = priority.argsort(dim=1, descending=True, stable=True)[:, :slots]
    return e.gather(order.sort(dim=1).values)


class KVPolicy:
    """A bounded KV cache policy: at most `budget` entries per key/value head; a prompt runs
    through the same step in chunks of `chunk` tokens (1: exactly as decoding it token by
    token; a larger chunk reads up to chunk − 1 more entries and runs faster).

    A policy gives `compress` (entries -> at most `slots` entries, and the block memory) and
    may give `readable` (what a step reads besides the new tokens: the cache by default)."""

    name: ClassVar[str] = ""

    def __init__(self, budget: int, *, chunk: int = 1) -> None:
        what = f"kv_cache {self.name}"
        if not _integer(budget) or budget < 1:
            raise ConfigError(f"{what}: budget must be an integer >= 1, got {budget!r}")
        if not _integer(chunk) or chunk < 1:
            raise ConfigError(f"{what}: chunk must be an integer >= 1, got {chunk!r}")
        self.budget, self.chunk = budget, chunk

    @property
    def slots(self) -> int:
        """Entries kept between steps per key/value head."""
        return self.budget

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"

    def init_state(self, k: Tensor, v: Tensor, offset: Tensor) -> BoundedKVCache:
        """An empty cache for the batch of the exact cache's k `[B, 0, H, D]`, v and offset."""
        e = empty_entries(k, v, self.slots)
        return BoundedKVCache(*e, offset.clone(), self, self.empty_memory(k, v))

    def empty_memory(self, k: Tensor, v: Tensor) -> BlockMemory | None:
        return None

    def memory_numbers(self, seq_len: int, k_dim: int, v_dim: int) -> int:
        """Numbers of the block memory per key/value head after `seq_len` tokens (InfLLM)."""
        return 0

    def readable(self, cache: BoundedKVCache, q: Tensor) -> Entries:
        """The entries a step with queries q `[B, T, H_q, D]` reads besides its own tokens;
        the cache's own entries come first."""
        return cache.entries

    def compress(
        self, e: Entries, newest: Tensor, memory: BlockMemory | None
    ) -> tuple[Entries, BlockMemory | None]:
        """Entries `e` (the cache, then the new tokens) cut to `slots` per row and head;
        `newest [B]` is each row's newest position."""
        raise NotImplementedError

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, cache: BoundedKVCache
    ) -> tuple[Tensor, BoundedKVCache]:
        """Attention output `[B, T, H_q, D_v]` of queries q over the cache and the new keys
        k and values v `[B, T, H, ·]` at `positions [B or 1, T]`, and the new cache; the T
        tokens run in chunks of `chunk`."""
        positions = positions.expand(q.shape[0], -1)
        outputs = []
        for start in range(0, q.shape[1], self.chunk):
            part = slice(start, start + self.chunk)
            o, cache = self._step(q[:, part], k[:, part], v[:, part], positions[:, part], cache)
            outputs.append(o)
        return torch.cat(outputs, dim=1), cache

    def _step(
        self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, cache: BoundedKVCache
    ) -> tuple[Tensor, BoundedKVCache]:
        b, t, h, _ = k.shape
        new = Entries(
            k,
            v,
            positions[:, :, None].expand(b, t, h),
            k.new_ones(b, t, h),
            k.new_zeros(b, t, h),
        )
        read = self.readable(cache, q)
        o, mass = attend(q, read.cat(new), positions, 1.0 / math.sqrt(q.shape[-1]))
        held = cache.k.shape[1]
        old = cache.entries._replace(score=cache.score + mass[:, :held])
        new = new._replace(score=mass[:, -t:])
        kept, memory = self.compress(old.cat(new), positions[:, -1], cache.memory)
        return o, BoundedKVCache(*kept, positions[:, -1] + 1, self, memory)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_policy(spec: dict[str, Any] | None) -> KVPolicy | None:
    """The policy of `kv_cache: {policy: NAME, budget: N, ...}` (None: the exact cache)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"kv_cache must be a mapping {{policy: ..., budget: ...}}, got {spec!r}")
    options = dict(spec)
    name = options.pop("policy", EXACT)
    if name == EXACT:
        return None
    if name not in POLICIES:
        known = ", ".join([EXACT, *POLICIES])
        raise ConfigError(f"kv_cache policy must be one of {known}, got {name!r}")
    cls = POLICIES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"kv_cache {name} takes options {', '.join(sorted(accepted))}; got {', '.join(unknown)}"
        )
    if "budget" not in options:
        raise ConfigError(f"kv_cache {name} needs a budget (entries per key/value head)")
    return cls(**options)


def bounded_layers(model: Model) -> list[int]:
    """The layers whose decode state a policy bounds: those whose mixer gives
    `bounded_state(policy, state)` (softmax attention); the others keep their own state."""
    return [i for i, b in enumerate(model.blocks) if hasattr(b.mixer, "bounded_state")]


def init_bounded_state(model: Model, batch_size: int, spec: dict[str, Any] | None) -> Any:
    """`model.init_state(batch_size)` with every attention layer's cache bounded by the
    policy `spec` (`build_policy`); the exact state when `spec` is None or exact."""
    state = model.init_state(batch_size)
    policy = build_policy(spec)
    if policy is None:
        return state
    state = list(state)
    for i in bounded_layers(model):
        state[i] = model.blocks[i].mixer.bounded_state(policy, state[i])
    return tuple(state)


# Per kept entry: its key and value, and its position, count and score (`Entries`).
ENTRY_EXTRAS = 3


def cache_numbers(model: Model, spec: dict[str, Any] | None, seq_len: int) -> int:
    """Numbers kept per sequence to decode after `seq_len` tokens under the policy `spec`:
    every number of the bounded attention layers' state, whatever device holds it (each kept
    entry's key, value, position, count and score, min(slots, seq_len) entries per key/value
    head, plus InfLLM's block memory, `memory_numbers`), the other layers' `state_size`."""
    policy = build_policy(spec)
    if policy is None:
        return model.state_size(seq_len)
    bounded = set(bounded_layers(model))
    total = memory_numbers(model, spec, seq_len)
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        if i in bounded:
            entries = min(policy.slots, seq_len)
            total += (2 * mixer.head_dim + ENTRY_EXTRAS) * mixer.n_kv_heads * entries
        else:
            total += mixer.state_size(seq_len)
    return total


def memory_numbers(model: Model, spec: dict[str, Any] | None, seq_len: int) -> int:
    """The part of `cache_numbers` in InfLLM's block memory (O(seq_len); 0 for the other
    policies): each stored block's keys, values and positions and its representative keys."""
    policy = build_policy(spec)
    if policy is None:
        return 0
    return sum(
        model.blocks[i].mixer.n_kv_heads
        * policy.memory_numbers(
            seq_len, model.blocks[i].mixer.head_dim, model.blocks[i].mixer.head_dim
        )
        for i in bounded_layers(model)
    )
