"""Batch surgery on decode states: stack per-row states into one batch, and roll rows back.

States are values (see `seqlab.mixers.base`): dataclasses, tuples, lists or dicts of
batch-first tensors. Fixed-size recurrent states concatenate along the batch. A `KVCache`
holds a different number of entries per row after ragged prefills or per-row speculative
acceptance, so rows are left-padded with position −1, which attention never reads; rotary
angles come from each row's own positions and offset, so padding changes no output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from seqlab.mixers.attention import KVCache
from seqlab.mixers.base import State, reorder_state
from seqlab.model import Model


def _zip_states(states: Sequence[State], tensors: Callable, caches: Callable) -> State:
    """Walk states of the same structure together; `tensors(list[Tensor])` and
    `caches(list[KVCache])` build each combined leaf."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, KVCache):
        return caches(list(states))
    if isinstance(first, Tensor):
        return tensors(list(states))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first,
            **{
                f.name: _zip_states([getattr(s, f.name) for s in states], tensors, caches)
                for f in dataclasses.fields(first)
            },
        )
    if isinstance(first, tuple | list):
        return type(first)(
            _zip_states([s[i] for s in states], tensors, caches) for i in range(len(first))
        )
    if isinstance(first, dict):
        return {k: _zip_states([s[k] for s in states], tensors, caches) for k in first}
    return first


def _cat_tensors(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if tensors[0].dim() else tensors[0]


def pad_cache(cache: KVCache, length: int) -> KVCache:
    """Left-pad `cache` to `length` entries with zeros at position −1."""
    missing = length - cache.k.shape[1]
    if missing <= 0:
        return cache
    b = cache.k.shape[0]
    pad = cache.k.new_zeros(b, missing, *cache.k.shape[2:])
    return KVCache(
        torch.cat([pad, cache.k], dim=1),
        torch.cat([pad.to(cache.v.dtype), cache.v], dim=1),
        torch.cat([cache.positions.new_full((b, missing), -1), cache.positions], dim=1),
        cache.offset,
    )


def _cat_caches(caches: list[KVCache]) -> KVCache:
    length = max(c.k.shape[1] for c in caches)
    padded = [pad_cache(c, length) for c in caches]
    return KVCache(
        *(torch.cat([getattr(c, f) for c in padded]) for f in ("k", "v", "positions", "offset"))
    )


def stack_states(states: Sequence[State]) -> State:
    """One batch state from states of the same model, rows in order (KV caches left-padded)."""
    return _zip_states(states, _cat_tensors, _cat_caches)


def merge_rows(parts: Sequence[tuple[Tensor, State]]) -> State:
    """The batch state whose rows `index` come from each `(index, state)` part; the indices
    together are a permutation of the batch."""
    if len(parts) == 1:
        return reorder_state(parts[0][1], parts[0][0].argsort())
    order = torch.cat([index for index, _ in parts])
    return reorder_state(stack_states([state for _, state in parts]), order.argsort())


def compact_cache(cache: KVCache) -> KVCache:
    """Move each row's padding to the left (keeping the order of its entries) and drop the
    columns that are padding in every row."""
    valid = cache.positions >= 0
    order = valid.to(torch.int8).argsort(dim=1, stable=True)
    keep = int(valid.sum(dim=1).max())
    order = order[:, order.shape[1] - keep :]
    rows = order[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
    return KVCache(
        cache.k.gather(1, rows),
        cache.v.gather(1, rows),
        cache.positions.gather(1, order),
        cache.offset,
    )


def drop_last(cache: KVCache, drop: Tensor | int) -> KVCache:
    """Forget the last `drop[i]` entries of row i (all rows wrote the same last columns).
    An int forgets as many in every row: rows are left-padded, so those are the last
    columns, sliced off without compacting."""
    if isinstance(drop, int):
        if drop == 0:
            return cache
        k, v, positions = (s[:, :-drop] for s in (cache.k, cache.v, cache.positions))
        return KVCache(k, v, positions, cache.offset - drop)
    t = cache.k.shape[1]
    column = torch.arange(t, device=drop.device)
    forget = column[None] >= (t - drop)[:, None]
    positions = cache.positions.masked_fill(forget, -1)
    return compact_cache(KVCache(cache.k, cache.v, positions, cache.offset - drop))


def is_kv_only(state: State) -> bool:
    """True when every layer state of a model state is a KV cache."""
    return all(isinstance(s, KVCache) for s in state)


def rewind(
    model: Model,
    saved: State,
    state: State,
    fed: Tensor,
    keep: Tensor,
    fed_lengths: Tensor | None = None,
) -> tuple[State, int]:
    """The state after only the first `keep[i]` tokens row i was fed, given the state `saved`
    before and `state` after feeding `fed [B, m]` (row i: its first `fed_lengths[i]` tokens,
    all m when None). Returns (state, forward passes).

    KV caches forget the extra entries (each row's newest entries are its last columns);
    other states re-run the kept tokens from `saved`, one forward per distinct keep length
    (rows keeping everything reuse `state`).
    """
    if fed_lengths is None:
        fed_lengths = torch.full_like(keep, fed.shape[1])
    whole = keep == fed_lengths
    if bool(whole.all()):
        return state, 0
    if is_kv_only(state):
        drop = (fed_lengths - keep).to(state[0].offset.device)
        return tuple(drop_last(c, drop) for c in state), 0
    parts, nfe = [], 0
    if bool(whole.any()):
        rows = whole.nonzero().squeeze(1)
        parts.append((rows, reorder_state(state, rows)))
    for n in keep[~whole].unique().tolist():
        rows = ((keep == n) & ~whole).nonzero().squeeze(1)
        _, part = model(fed[rows, :n], reorder_state(saved, rows))
        parts.append((rows, part))
        nfe += 1
    return merge_rows(parts), nfe


def feed_rows(model: Model, state: State, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, State]:
    """Feed row i its first `lengths[i]` tokens of `tokens [B, m]` (one forward per distinct
    length); returns the logits after each row's last token `[B, V]` and the new state."""
    if bool((lengths == tokens.shape[1]).all()):
        logits, state = model(tokens, state)
        return logits[:, -1], state
    parts, logits = [], None
    for n in lengths.unique().tolist():
        rows = (lengths == n).nonzero().squeeze(1)
        out, part = model(tokens[rows, :n], reorder_state(state, rows))
        if logits is None:
            logits = out.new_empty(tokens.shape[0], out.shape[-1])
        logits[rows] = out[:, -1]
        parts.append((rows, part))
    return logits, merge_rows(parts)
