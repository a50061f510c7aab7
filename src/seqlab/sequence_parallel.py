"""Sequence parallelism (`train.sequence_parallel: N`): each example's sequence is split into
N contiguous shards, one per rank of a process group, LASP-2 style for the matrix-state
recurrences (Sun et al., 2025).

A shard of a linear recurrence S_t = A_t S_{t−1} + (write_t), with S `[K, V]` per head and
A_t `[K, K]` acting on the key side (a scalar or diagonal decay, or I − β k kᵀ for the delta
rules), maps the state entering it affinely: S_out = T_r S_in + U_r, with T_r the product of
the shard's A_t and U_r the state the shard writes from zero. Every rank

1. runs its shard from a zero state with the mixer's own chunked kernel, on values widened by
   K zero columns and from the start state [I_K | 0]: the value columns evolve independently
   under the same A_t, so the final state is [T_r | U_r] and the output's first K columns are
   the read of the identity, R_t = (read of A_t ⋯ A_1 e_j)_j `[T, K]`;
2. all-gathers (T_r, U_r) (`_AllGather`, whose backward exchanges the state gradients)
   and combines the prefix S_in(r) = T_{r−1} S_in(r−1) + U_{r−1}, S_in(0) = 0;
3. corrects its output: o_t = o_t^local + R_t S_in (the read is linear in the state).

Short convolutions take the k − 1 conv inputs before the shard from the previous rank (the
same all-gather), and rotary positions start at the shard's global offset.

The diagonal (and S4's dense, time-invariant) scans, h_t = a_t ⊙ h_{t−1} + b_t with an
output read linearly from h_t (`shard_state_scan`), use the same gather and prefix: widening
by an identity would cost one copy per state element there, so each rank instead runs its
scan from zero (output y^local, final state U_r), takes the transition T_r = Π_t a_t from the
mixer (a closed form where cheap, else the scan's zero-input response from the all-ones
state), combines S_in(r) = T_{r−1} ⊙ S_in(r−1) + U_{r−1} and adds the scan's zero-input
response from S_in (o_t += read_t(Π_{s≤t} a_s ⊙ S_in)), a second pass of the same kernel.

Softmax attention layers run `seqlab.ops.ring_attention` (`shard.attention`: ring,
ring_bidirectional or ulysses) on the same shards, so hybrids mix both per layer. The shard
columns are near-equal (`shard.split` positions) or balance the loss-bearing tokens
(tokens, `split_bounds`; not the compute).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.layout import Layout
from seqlab.mixers.base import state_dtype


@dataclass(frozen=True)
class SequenceShard:
    """This rank's part of every sequence: rank `rank` of `size` in `group`, its first token
    at global position `start`; `bounds` the [start, end) columns of every rank (None: not
    known, attention gathers the shard lengths); `attention` the softmax attention scheme
    (`seqlab.ops.ring_attention.MODES`); `split` how the columns are chosen (positions or
    tokens, `split_bounds`)."""

    group: Any
    rank: int
    size: int
    start: int = 0
    bounds: tuple[tuple[int, int], ...] | None = None
    attention: str = "ring"
    split: str = "positions"


_CURRENT: ContextVar[SequenceShard | None] = ContextVar("sequence_shard", default=None)


def current_shard() -> SequenceShard | None:
    """The shard the running forward computes (None outside `sharded`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def sharded(shard: SequenceShard) -> Iterator[SequenceShard]:
    """Mixers called inside run their part of a sequence split across `shard.group`."""
    token = _CURRENT.set(shard)
    try:
        yield shard
    finally:
        _CURRENT.reset(token)


def shard_bounds(length: int, size: int) -> list[tuple[int, int]]:
    """Contiguous near-equal [start, end) of `length` positions over `size` ranks (the first
    `length % size` ranks one longer)."""
    base, extra = divmod(length, size)
    bounds, start = [], 0
    for r in range(size):
        end = start + base + (r < extra)
        bounds.append((start, end))
        start = end
    return bounds


def split_bounds(length: int, size: int, split: str, mask: Tensor | None) -> list[tuple[int, int]]:
    """The [start, end) columns of each rank for a batch of `length` input columns. positions:
    `shard_bounds`. tokens (with `mask` `[B, length]`, True where input column c's target,
    token c + 1, is scored, i.e. the batch mask[:, 1:]): one boundary set for the whole batch
    (ranks hold contiguous columns of every row), the end of rank r's columns the column c
    whose scored prefix count Σ_{j<c} n_j (n_j the scored targets of column j over the rows)
    is nearest to (r + 1)/N of the total, each rank at least one column; so every rank holds
    about 1/N of the loss-bearing tokens (within one column).

    tokens balances the loss-bearing tokens, NOT the compute: every kernel computes the pad
    columns of a shard too, and ring attention pads every block to the longest shard, so a
    rank's work follows its column count (and, for causal attention, how late its columns
    are); on right-padded batches tokens gives the early ranks fewer, the late ranks more
    columns. Use positions for balanced compute."""
    if split == "positions" or mask is None:
        return shard_bounds(length, size)
    if length < size:
        raise ConfigError(f"train.sequence_split tokens needs >= {size} columns, got {length}")
    if mask.shape[1] != length:
        raise ShapeError(f"split_bounds: mask of {mask.shape[1]} columns for {length} inputs")
    prefix = mask.sum(0).cumsum(0).to(torch.float64)
    targets = prefix[-1] * torch.arange(1, size, dtype=torch.float64) / size
    nearest = ((prefix[None] - targets[:, None]).abs().argmin(dim=1) + 1).tolist()
    ends, last = [], 0
    for r, end in enumerate(nearest):
        last = min(max(end, last + 1), length - (size - 1 - r))
        ends.append(last)
    ends.append(length)
    return list(zip([0, *ends[:-1]], ends, strict=True))


def shard_columns(shard: SequenceShard, length: int) -> tuple[tuple[int, int], ...]:
    """Every rank's [start, end) columns: `shard.bounds`, or gathered from the ranks' shard
    lengths (this rank's is `length`)."""
    if shard.bounds is not None:
        return shard.bounds
    lengths = [torch.zeros((), dtype=torch.long) for _ in range(shard.size)]
    dist.all_gather(lengths, torch.tensor(length), group=shard.group)
    ends = torch.stack(lengths).cumsum(0).tolist()
    return tuple(zip([0, *ends[:-1]], ends, strict=True))


class _AllGather(torch.autograd.Function):
    """Every rank's tensor; the backward sums each rank's gradient over the group (reduce-
    scatter on NCCL, else an all-reduce: torch's own gloo backward scatters from group ranks
    taken as global ones, which fails in every group but the first, i.e. with replicas > 1)."""

    @staticmethod
    def forward(ctx: Any, group: Any, tensor: Tensor) -> tuple[Tensor, ...]:
        ctx.group, ctx.rank = group, dist.get_rank(group)
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, tensor, group=group)
        return tuple(gathered)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, Tensor]:
        grads = tuple(g.contiguous() for g in grads)
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            mine = torch.empty_like(grads[ctx.rank])
            dist.reduce_scatter(mine, list(grads), group=ctx.group)
            return None, mine
        stacked = torch.stack(grads)
        dist.all_reduce(stacked, group=ctx.group)
        return None, stacked[ctx.rank]


def _gather(shard: SequenceShard, tensor: Tensor) -> tuple[Tensor, ...]:
    return _AllGather.apply(shard.group, tensor.contiguous())


def _tied(value: Tensor, gathered: tuple[Tensor, ...]) -> Tensor:
    """`value`, made to depend (with weight 0) on every gathered tensor: the gather's backward
    is a collective, so it must run on every rank, also where nothing gathered is used."""
    return value + sum(g.sum() for g in gathered) * 0


def previous_tail(shard: SequenceShard, tail: Tensor) -> Tensor:
    """The previous rank's `tail` (the k − 1 conv inputs before this shard), zeros on rank 0."""
    gathered = _gather(shard, tail)
    if shard.rank == 0:
        return _tied(torch.zeros_like(tail), gathered)
    return gathered[shard.rank - 1]


def preceding_sum(shard: SequenceShard, total: Tensor) -> Tensor:
    """Σ_{r' < r} of every rank's `total` (e.g. a running phase's shard sum): what this
    rank's shard starts from; zeros on rank 0. Its backward exchanges the gradients."""
    gathered = _gather(shard, total)
    return _tied(torch.zeros_like(total), gathered) + sum(gathered[: shard.rank], start=0)


def shard_entry(name: str, state: Any, layout: Layout) -> SequenceShard:
    """The running shard, for a mixer that runs under sequence parallelism only causally and
    from no carried state (a one-line SeqlabError otherwise)."""
    shard = current_shard()
    assert shard is not None
    if state is not None or layout != Layout.CAUSAL:
        raise SeqlabError(
            f"{name} runs under sequence parallelism only causally and without a carried "
            f"state (got layout {layout.kind.value!r})"
        )
    return shard


def conv_history(shard: SequenceShard, x: Tensor, taps: int, name: str) -> Tensor:
    """The `taps` conv inputs before this shard of x `[B, T, C]` (`previous_tail`)."""
    if x.shape[1] < taps:
        raise ShapeError(
            f"{name}: a sequence-parallel shard of {x.shape[1]} tokens is shorter than the "
            f"conv's {taps} tokens of history; use fewer ranks or longer sequences"
        )
    return previous_tail(shard, x[:, x.shape[1] - taps :])


def _gather_any(shard: SequenceShard, tensor: Tensor) -> tuple[Tensor, ...]:
    """`_gather`, complex tensors as real pairs."""
    if not tensor.is_complex():
        return _gather(shard, tensor)
    return tuple(torch.view_as_complex(g) for g in _gather(shard, torch.view_as_real(tensor)))


def entering_state(
    shard: SequenceShard,
    transition: Tensor,
    local: Tensor,
    advance: Callable[[Tensor, Tensor], Tensor] = torch.mul,
) -> Tensor:
    """The state entering this rank's shard, from every rank's transition T_r and local final
    state U_r: S_in(r) = advance(T_{r−1}, S_in(r−1)) + U_{r−1}, S_in(0) = 0. `advance`:
    elementwise for a scan's diagonal T_r of U_r's shape (real or complex), `torch.matmul`
    for a matrix-state recurrence (T_r `[B, H, K, K]`, U_r `[B, H, K, V]`)."""
    transitions, locals_ = _gather_any(shard, transition), _gather_any(shard, local)
    state = _tied(torch.zeros_like(local), transitions + locals_)
    for r in range(shard.rank):
        state = advance(transitions[r], state) + locals_[r]
    return state


def shard_state_scan(
    local: Callable[[], tuple[Tensor, Tensor]],
    response: Callable[[Tensor], tuple[Tensor, Tensor]],
    transition: Tensor | None = None,
    advance: Callable[[Tensor, Tensor], Tensor] = torch.mul,
) -> Tensor:
    """This rank's scan output as if the whole sequence had run in one process, for a scan
    whose output and final state are linear in (its inputs, its start state) given its gates
    (the module docstring's diagonal form).

    local() -> (y, h_last) of the shard from the zero state; response(h0) -> (y, h_last) of
    the shard from h0 with zero inputs; transition: T_r (Π_t a_t, or the dense Ā^T that
    `advance` applies), by default response(1)'s final state (diagonal scans only).
    Returns y^local + response(S_in)'s y."""
    shard = current_shard()
    assert shard is not None
    output, written = local()
    if transition is None:
        transition = response(torch.ones_like(written))[1]
    entering = entering_state(shard, transition, written, advance)
    return output + response(entering)[0]


def widened_scan(
    kernel: Any, q: Tensor, k: Tensor, v: Tensor, gates: tuple[Tensor, ...], state_v: int, **options
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 1 of the module docstring: `kernel(q, k, [0 | v], *gates, initial_state=[I | 0])`.
    `state_v` is the kernel's own state width (it may add columns to v, as linear attention's
    normaliser does). Returns o_local `[B, T, H, V']`, R `[B, T, H, K]`, T_r `[B, H, K, K]`
    and U_r `[B, H, K, state_v]`."""
    b, _, h, width = k.shape
    dtype = state_dtype(q.dtype)
    start = torch.zeros(b, h, width, width + state_v, device=q.device, dtype=dtype)
    start[..., :width] = torch.eye(width, device=q.device, dtype=dtype)
    widened = torch.cat([v.new_zeros(*v.shape[:-1], width), v], dim=-1)
    o, final, *_ = kernel(
        q, k, widened, *gates, initial_state=start, output_final_state=True, **options
    )
    return o[..., width:], o[..., :width], final[..., :width], final[..., width:]


def shard_scan(
    kernel: Any, q: Tensor, k: Tensor, v: Tensor, gates: tuple[Tensor, ...], state_v: int, **options
) -> Tensor:
    """The kernel output `[B, T, H, V']` of this rank's shard as if the whole sequence had
    run in one process (steps 1–3 of the module docstring)."""
    shard = current_shard()
    assert shard is not None
    local, read, transition, written = widened_scan(kernel, q, k, v, gates, state_v, **options)
    entering = entering_state(shard, transition, written, torch.matmul)
    return local + torch.einsum("bthj,bhjv->bthv", read, entering.to(read.dtype))


UNSUPPORTED = "its state is not a linear recurrence nor softmax attention"


def refusal(cls: type) -> str:
    """Why a mixer class lacks sequence parallelism (its `sequence_parallel_refusal`)."""
    return getattr(cls, "sequence_parallel_refusal", "") or UNSUPPORTED


def check_supported(layer_names: list[str]) -> None:
    """A one-line ConfigError for a layer whose mixer lacks sequence parallelism."""
    from seqlab.registry import MIXERS

    def supports(name: str) -> bool:
        return bool(getattr(MIXERS.get(name).target, "sequence_parallel", False))

    for name in layer_names:
        if not supports(name):
            supported = [n for n in MIXERS.names() if supports(n)]
            raise ConfigError(
                f"train.sequence_parallel does not support mixer {name!r} "
                f"({refusal(MIXERS.get(name).target)}); supported: {supported}"
            )


def check_model(model: torch.nn.Module, shard: SequenceShard) -> None:
    """A one-line ConfigError from the first module that refuses `shard`: a mixer whose class
    declares `sequence_parallel = False` inside a supported layer (a `memory_cache` wrapper),
    a module recording an auxiliary loss (`records_auxiliary_loss`: a statistic of the whole
    sequence), attention under ulysses with heads not divisible by N, a window or a sparsity
    pattern (`check_sequence_parallel`)."""
    from seqlab.mixers.base import Mixer

    for module in model.modules():
        if isinstance(module, Mixer) and not module.sequence_parallel:
            raise ConfigError(
                f"train.sequence_parallel does not support {module.name} ({refusal(type(module))})"
            )
        if getattr(module, "records_auxiliary_loss", False):
            raise ConfigError(
                f"train.sequence_parallel does not support {type(module).__name__}'s "
                f"auxiliary loss (a statistic of the whole sequence); set its weight to 0"
            )
        check = getattr(module, "check_sequence_parallel", None)
        if check is not None:
            check(shard)


def sequence_groups(world_size: int, rank: int, size: int) -> tuple[Any, int, int]:
    """The sequence-parallel groups of `size` consecutive ranks (every rank creates all of
    them, as `new_group` requires): (this rank's group, its rank in it, its data-parallel
    index)."""
    if world_size % size:
        raise ConfigError(
            f"train.sequence_parallel ({size}) must divide the number of processes "
            f"({world_size}): processes = data-parallel replicas x sequence_parallel"
        )
    mine = None
    for first in range(0, world_size, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return mine, rank % size, rank // size
