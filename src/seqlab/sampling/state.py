"""Batch surgery on decode states for decoders: put rows of several states back in place,
roll rows back after per-row acceptance, and feed rows different numbers of tokens.

The tree walk itself (`stack_states`, `reorder_state`, `drop_last`, ...) is `seqlab.state`;
growing states such as KV caches pad, concatenate and truncate themselves, so nothing here
knows a concrete state type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seqlab.model import Model
from seqlab.state import State, can_drop_last, drop_last, reorder_state, stack_states


def merge_rows(parts: Sequence[tuple[Tensor, State]]) -> State:
    """The batch state whose rows `index` come from each `(index, state)` part; the indices
    together are a permutation of the batch."""
    if len(parts) == 1:
        return reorder_state(parts[0][1], parts[0][0].argsort())
    order = torch.cat([index for index, _ in parts])
    return reorder_state(stack_states([state for _, state in parts]), order.argsort())


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

    States that can forget (KV caches: each row's newest entries are its last columns) drop
    the extra entries; other states re-run the kept tokens from `saved`, one forward per
    distinct keep length (rows keeping everything reuse `state`).
    """
    if fed_lengths is None:
        fed_lengths = torch.full_like(keep, fed.shape[1])
    whole = keep == fed_lengths
    if bool(whole.all()):
        return state, 0
    if can_drop_last(state):
        drop = fed_lengths - keep
        # one count for every row: slicing off the last columns is cheaper than compacting
        return drop_last(state, int(drop[0]) if bool((drop == drop[0]).all()) else drop), 0
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
