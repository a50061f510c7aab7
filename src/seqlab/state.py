"""Decode states as trees: one walk for mapping over a state and zipping states together.

A state is a value (never stored on a module): a tensor, or a dataclass, tuple, list or dict
of states; other leaves (None, ints) pass through unchanged. Tensors are batch-first.

Most states are fixed-size per row, so batch surgery is per tensor: select rows, clone,
concatenate along the batch. A leaf that grows along a length axis, where rows may hold
different numbers of entries (the attention `KVCache`), implements `GrowingState`: it pads,
concatenates and truncates itself, and the utilities here dispatch to it, so that code
doing batch surgery never needs to know the concrete state types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

State = Any
G = TypeVar("G", bound="GrowingState")


@runtime_checkable
class GrowingState(Protocol):
    """A state leaf whose rows grow along a length axis and may differ in length.

    `concat`: one state holding the rows of `items` in order (padded to a common length).
    `pad_to`: the same rows padded to `length` entries (padding is never read).
    `drop_last`: forget the last `drop` entries of every row, or `drop[i]` of row i.
    """

    @classmethod
    def concat(cls: type[G], items: Sequence[G]) -> G: ...

    def pad_to(self: G, length: int) -> G: ...

    def drop_last(self: G, drop: Tensor | int) -> G: ...


def zip_states(
    fn: Callable[[list[Tensor]], Tensor],
    states: Sequence[State],
    *,
    grown: Callable[[list[Any]], Any] | None = None,
) -> State:
    """Walk states of one structure together and combine them leaf by leaf.

    `fn(tensors)` builds each tensor leaf from the matching tensors of `states`. With
    `grown`, a `GrowingState` leaf is built by `grown(items)` instead of field by field.
    The first state's other leaves (None, ints, strings) are kept.
    """
    first = states[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return fn(list(states))
    if grown is not None and isinstance(first, GrowingState):
        return grown(list(states))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        changes = {
            f.name: zip_states(fn, [getattr(s, f.name) for s in states], grown=grown)
            for f in dataclasses.fields(first)
        }
        return dataclasses.replace(first, **changes)
    if isinstance(first, tuple | list):
        return type(first)(
            zip_states(fn, [s[i] for s in states], grown=grown) for i in range(len(first))
        )
    if isinstance(first, dict):
        return {k: zip_states(fn, [s[k] for s in states], grown=grown) for k in first}
    return first


def tensor_leaves(state: State) -> Iterator[Tensor]:
    """The tensors of a state, in order, read without rebuilding the tree (growing leaves are
    walked into like any dataclass)."""
    if isinstance(state, Tensor):
        yield state
    elif dataclasses.is_dataclass(state) and not isinstance(state, type):
        for f in dataclasses.fields(state):
            yield from tensor_leaves(getattr(state, f.name))
    elif isinstance(state, tuple | list):
        for part in state:
            yield from tensor_leaves(part)
    elif isinstance(state, dict):
        for part in state.values():
            yield from tensor_leaves(part)


def map_state(
    fn: Callable[[Tensor], Tensor],
    state: State,
    *,
    grown: Callable[[Any], Any] | None = None,
) -> State:
    """Apply `fn` to every tensor of a state (`grown` to every `GrowingState` leaf, if given,
    instead of to its tensors)."""
    return zip_states(
        lambda tensors: fn(tensors[0]),
        [state],
        grown=None if grown is None else lambda items: grown(items[0]),
    )


def reorder_state(state: State, index: Tensor) -> State:
    """Select batch rows of a state by `index` (beam reordering, batch pruning)."""
    return map_state(lambda t: t.index_select(0, index.to(t.device)) if t.dim() else t, state)


def clone_state(state: State) -> State:
    return map_state(lambda t: t.clone(), state)


def stack_states(states: Sequence[State]) -> State:
    """One batch state from states of the same model, rows in order: the rows of
    `states[0]`, then those of `states[1]`, ... (growing leaves padded by their `concat`)."""
    return zip_states(
        lambda ts: torch.cat(ts) if ts[0].dim() else ts[0],
        states,
        grown=lambda items: type(items[0]).concat(items),
    )


def interleave_states(states: Sequence[State]) -> State:
    """Concatenate same-structured states `[B, ...]` into one `[B · len(states), ...]`, row
    `b · len(states) + j` holding row b of `states[j]` (the order of `fold_blocks`)."""
    return zip_states(
        lambda ts: torch.stack(ts, dim=1).flatten(0, 1) if ts[0].dim() else ts[0], states
    )


def can_drop_last(state: State) -> bool:
    """Whether the state can forget its newest entries by itself: it holds growing leaves
    and no tensor outside them (a recurrent state cannot forget; it must be re-run)."""
    growing, other = [], []
    map_state(lambda t: other.append(t) or t, state, grown=lambda leaf: growing.append(leaf))
    return bool(growing) and not other


def drop_last(state: State, drop: Tensor | int) -> State:
    """Forget the last `drop` entries of every row of every growing leaf (`drop[i]` of row i
    for a tensor); see `can_drop_last`."""
    return map_state(lambda t: t, state, grown=lambda leaf: leaf.drop_last(drop))
