"""Causal softmax attention over a sequence split across the ranks of a process group
(`train.sequence_parallel`, `train.sequence_parallel_attention`).

Rank r holds the contiguous columns [s_r, e_r) of every row (`bounds`, the same on every
rank): its queries q_r `[B, T_r, H, D]` and keys/values k_r, v_r `[B, T_r, H_kv, D]` (rotary
already applied at global positions; H a multiple of H_kv, grouped-query heads). Every variant
returns this rank's rows of the single-process output

    o_t = Σ_{s ≤ t} softmax_s(q_t · k_s / √D) v_s,   t, s global positions,

built from blocks (queries of rank i, keys of rank j ≤ i). A block gives its partial output
and log-sum-exp, o_b = softmax(S_b) v_b and ℓ_b = log Σ_s exp(S_b)_s `[B, H, T_q]` with
S_b = q kᵀ / √D masked to s ≤ t; two partials merge exactly (online softmax):
ℓ = log(e^{ℓ_1} + e^{ℓ_2}), o = e^{ℓ_1 − ℓ} o_1 + e^{ℓ_2 − ℓ} o_2. The backward of a block,
with P = exp(S_b − ℓ) (ℓ of the whole row) and Δ_t = Σ_d dO_td O_td, is dV = Pᵀ dO,
dS = P ∘ (dO Vᵀ − Δ), dQ = dS K / √D, dK = dSᵀ Q / √D (FlashAttention-2's identities).
A block runs its queries `QUERY_CHUNK` at a time, forward and backward recompute alike, so a
rank holds `[B, H, chunk, T_r]` scores, never `[B, H, T_r, T_r]`: its peak memory grows like
T_r · chunk.

- `ring_attention` (Ring Attention, Liu et al., 2023): (k, v) blocks travel one hop per step
  r → r + 1 around the ring; after N − 1 steps every rank has merged every earlier block. The
  backward sends (k, v, dk, dv) around the ring N times: each rank adds its dK/dV to the
  block passing by, which arrives back at its owner with the whole sum. Holds two K/V blocks.
- `token_ring_attention` (TokenRing, Wang et al., 2024, bidirectional): K/V stay; the query
  blocks travel r → r + 1 while every partial (o_b, ℓ_b) goes straight back to the owner of
  its queries (the other direction, in a fully connected mesh). The backward sends (q, dO, ℓ,
  Δ) the same way and the dQ partials back to their owners.
- `ulysses_attention` (DeepSpeed-Ulysses, Jacobs et al., 2023): an all-to-all turns the
  sequence shards of all heads into the whole sequence of H/N heads, plain causal attention
  runs, a second all-to-all returns the sequence shards (needs N | H and N | H_kv).

Under mixed precision (`torch.autocast`, bf16 or fp16 projections) ring and ring_bidirectional
compute in float32: the inputs are upcast (float64 stays), the blocks, ℓ, the merges, the
gradients and every message are float32 with autocast off inside, and the output is cast back
to the inputs' dtype; an 8-bit mantissa would lose the merges, and half-precision o_b sent
beside a float32 ℓ would not fit the receiver's buffer. Ulysses' SDPA follows autocast as
single-process attention does.

Shards may differ in length (uneven or token-balanced splits): blocks are padded to the
longest shard and padded keys are masked. `attention_reference` in `seqlab.ops.attention` is
the single-process reference the tests compare against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError
from seqlab.ops.attention import scaled_dot_product_attention
from seqlab.ops.float32 import float32_kernel

Bounds = Sequence[tuple[int, int]]
MODES = ("ring", "ring_bidirectional", "ulysses")


QUERY_CHUNK = 128


def block_positions(
    bounds: Bounds, q_rank: int, k_rank: int, length: int, device: Any
) -> tuple[Tensor, Tensor]:
    """Global positions `[L]` of the padded query block of `q_rank` and key block of `k_rank`
    (`length` L); padded keys sit past every query, so query i reads key j iff
    k_pos[j] ≤ q_pos[i] (the causal mask, built one query chunk at a time)."""
    q_pos = bounds[q_rank][0] + torch.arange(length, device=device)
    k_pos = bounds[k_rank][0] + torch.arange(length, device=device)
    return q_pos, k_pos.masked_fill(k_pos >= bounds[k_rank][1], bounds[-1][1] + length)


def _mask(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Boolean `[T_q, T_k]`: query i reads key j iff k_pos[j] ≤ q_pos[i]."""
    return k_pos[None] <= q_pos[:, None]


def _finite(lse: Tensor) -> Tensor:
    """ℓ with −∞ (a row that reads nothing) replaced by 0, so exp(S − ℓ) = 0 there."""
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def _repeat(x: Tensor, heads: int) -> Tensor:
    """K or V `[B, T, H_kv, D]` repeated to the H query heads."""
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def _head_major(x: Tensor, heads: int) -> Tensor:
    """`[B, T, H_x, D]` -> `[B · H, T, D]` (repeated to `heads`), contiguous, for `bmm`."""
    x = _repeat(x, heads)
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


def _token_major(x: Tensor, batch: int) -> Tensor:
    """`[B · H, T, D]` -> `[B, T, H, D]`."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2).contiguous()


def _chunk_scores(
    q: Tensor, k_t: Tensor, q_pos: Tensor, k_pos: Tensor, scale: float, heads: int
) -> Tensor:
    """Masked S = q kᵀ · scale `[B · H, C, T_k]` of one query chunk q `[B · H, C, D]`, with
    kᵀ `[B · H, D, T_k]`."""
    s = torch.bmm(q, k_t).mul_(scale).view(-1, heads, q.shape[1], k_t.shape[2])
    return s.masked_fill_(~_mask(q_pos, k_pos), -math.inf).view(-1, q.shape[1], k_t.shape[2])


@float32_kernel
def block_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    scale: float,
    chunk: int = QUERY_CHUNK,
) -> tuple[Tensor, Tensor]:
    """One block, q `[B, T_q, H, D]` against k, v `[B, T_k, H_kv, D]` with positions q_pos
    `[T_q]`, k_pos `[T_k]`: (o_b `[B, T_q, H, D]`, ℓ_b `[B, H, T_q]`), ℓ_b = −∞ and o_b = 0
    on rows that read no key. Queries run `chunk` at a time, so the scores held are
    `[B, H, chunk, T_k]`, never `[B, H, T_q, T_k]`; `block_attention_reference` is the whole
    block at once. Results are written in place: tensors kept between the chunks' temporaries
    would fragment a CPU heap into a peak near the whole block's."""
    batch, steps, heads, _ = q.shape
    qh, vh = _head_major(q, heads), _head_major(v, heads)
    k_t = _head_major(k, heads).transpose(1, 2)
    o = qh.new_empty(qh.shape[0], steps, vh.shape[2])
    lse = qh.new_empty(qh.shape[0], steps)
    for i in range(0, steps, chunk):
        rows = slice(i, i + chunk)
        s = _chunk_scores(qh[:, rows], k_t, q_pos[rows], k_pos, scale, heads)
        torch.logsumexp(s, dim=-1, out=lse[:, rows])
        p = s.sub_(_finite(lse[:, rows])[..., None]).exp_()
        torch.bmm(p, vh, out=o[:, rows])
    return _token_major(o, batch), lse.view(batch, heads, steps)


def block_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """`block_attention` with the whole `[B, H, T_q, T_k]` score block at once (differentiable;
    its autograd gradient is what `block_grads` computes when ℓ is the block's own)."""
    heads = q.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q, _repeat(k, heads)) * scale
    s = s.masked_fill(~_mask(q_pos, k_pos), -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - _finite(lse)[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", p, _repeat(v, heads)), lse


@float32_kernel
def merge(o: Tensor, lse: Tensor, o_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """The online-softmax merge of two partials (module docstring)."""
    new = torch.logaddexp(lse, lse_b)
    safe = _finite(new)
    w, w_b = torch.exp(lse - safe), torch.exp(lse_b - safe)
    return o * w.transpose(1, 2)[..., None] + o_b * w_b.transpose(1, 2)[..., None], new


@float32_kernel
def block_grads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    do: Tensor,
    lse: Tensor,
    delta: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    scale: float,
    chunk: int = QUERY_CHUNK,
) -> tuple[Tensor, Tensor, Tensor]:
    """dQ `[B, T_q, H, D]`, dK and dV `[B, T_k, H_kv, D]` of one block, from the whole row's
    ℓ and Δ `[B, H, T_q]` (module docstring), recomputed in the forward's query chunks and
    accumulated in place; query heads of a group sum into their K/V head."""
    batch, steps, heads, _ = q.shape
    group = heads // k.shape[2]
    qh, doh, kh, vh = (_head_major(x, heads) for x in (q, do, k, v))
    k_t, v_t = kh.transpose(1, 2), vh.transpose(1, 2)
    lse, delta = _finite(lse).reshape(-1, steps), delta.reshape(-1, steps)
    dq, dk, dv = torch.empty_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    for i in range(0, steps, chunk):
        rows = slice(i, i + chunk)
        s = _chunk_scores(qh[:, rows], k_t, q_pos[rows], k_pos, scale, heads)
        p = s.sub_(lse[:, rows, None]).exp_()
        dv.baddbmm_(p.transpose(1, 2), doh[:, rows])
        ds = torch.bmm(doh[:, rows], v_t).sub_(delta[:, rows, None]).mul_(p).mul_(scale)
        torch.bmm(ds, kh, out=dq[:, rows])
        dk.baddbmm_(ds.transpose(1, 2), qh[:, rows])

    def per_kv_head(x: Tensor) -> Tensor:
        return _token_major(x, batch).unflatten(2, (k.shape[2], group)).sum(3)

    return _token_major(dq, batch), per_kv_head(dk), per_kv_head(dv)


def _pad(x: Tensor, length: int, dim: int = 1) -> Tensor:
    """`x` zero-padded along `dim` to `length`."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class _Ring:
    """Point-to-point exchanges within `group` (peers named by group rank)."""

    def __init__(self, group: Any, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size

    def start(self, sends: list[tuple[Tensor, int]], recvs: list[tuple[Tensor, int]]) -> list:
        """Post the sends and receives (`batch_isend_irecv`); returns the requests."""
        assert all(t.is_contiguous() for t, _ in recvs)
        ops = [
            dist.P2POp(op, t.contiguous(), dist.get_global_rank(self.group, peer), self.group)
            for op, pairs in ((dist.isend, sends), (dist.irecv, recvs))
            for t, peer in pairs
        ]
        return dist.batch_isend_irecv(ops) if ops else []

    def shift(self, tensor: Tensor) -> tuple[Tensor, list]:
        """Send `tensor` to rank + 1, receive the same shape from rank − 1 (started)."""
        received = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        nxt, prev = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        return received, self.start([(tensor, nxt)], [(received, prev)])


def _wait(requests: list) -> None:
    for request in requests:
        request.wait()


class RingAttention(torch.autograd.Function):
    """`ring_attention` with its ring backward (module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, bounds, rank, group, scale):  # type: ignore[override]
        size = len(bounds)
        ring = _Ring(group, rank, size)
        length = max(e - s for s, e in bounds)
        qp = _pad(q, length)
        kv = torch.stack([_pad(k, length), _pad(v, length)])
        o = torch.zeros_like(qp)
        lse = qp.new_full((q.shape[0], q.shape[2], length), -math.inf)
        for step in range(size):
            source = (rank - step) % size
            incoming, requests = ring.shift(kv) if step < size - 1 else (kv, [])
            if source <= rank:
                pos = block_positions(bounds, rank, source, length, q.device)
                o, lse = merge(o, lse, *block_attention(qp, kv[0], kv[1], *pos, scale))
            _wait(requests)
            kv = incoming
        ctx.save_for_backward(qp, k, v, o, lse)
        ctx.setup = (bounds, rank, group, scale)
        return o[:, : q.shape[1]]

    @staticmethod
    @float32_kernel
    def backward(ctx, do):  # type: ignore[override]
        qp, k, v, o, lse = ctx.saved_tensors
        bounds, rank, group, scale = ctx.setup
        size, t = len(bounds), do.shape[1]
        ring = _Ring(group, rank, size)
        length = qp.shape[1]
        do = _pad(do, length)
        delta = (do * o).sum(-1).transpose(1, 2)
        dq = torch.zeros_like(qp)
        kv = torch.stack([_pad(k, length), _pad(v, length)])
        packet = torch.cat([kv, torch.zeros_like(kv)])  # k, v, dk, dv
        for step in range(size):
            source = (rank - step) % size
            if source <= rank:
                pos = block_positions(bounds, rank, source, length, qp.device)
                dq_b, dk_b, dv_b = block_grads(
                    qp, packet[0], packet[1], do, lse, delta, *pos, scale
                )
                dq = dq + dq_b
                packet = torch.cat([packet[:2], (packet[2:] + torch.stack([dk_b, dv_b]))])
            packet = packet if step < size - 1 else packet[2:]
            incoming, requests = ring.shift(packet)
            _wait(requests)
            packet = incoming
        return dq[:, :t], packet[-2][:, :t], packet[-1][:, :t], None, None, None, None


class TokenRingAttention(torch.autograd.Function):
    """`token_ring_attention`: queries travel, partial outputs and dQ return to their owner."""

    @staticmethod
    def forward(ctx, q, k, v, bounds, rank, group, scale):  # type: ignore[override]
        size = len(bounds)
        ring = _Ring(group, rank, size)
        length = max(e - s for s, e in bounds)
        qp, kp, vp = (_pad(x, length) for x in (q, k, v))
        b, h, d = q.shape[0], q.shape[2], q.shape[3]
        o, lse = block_attention(
            qp, kp, vp, *block_positions(bounds, rank, rank, length, q.device), scale
        )
        held = qp
        for step in range(1, size):
            held, requests = ring.shift(held)
            _wait(requests)
            owner, reader = (rank - step) % size, (rank + step) % size
            sends, recvs = [], []
            if owner > rank:  # the held queries read this rank's keys
                pos = block_positions(bounds, owner, rank, length, q.device)
                o_b, lse_b = block_attention(held, kp, vp, *pos, scale)
                sends.append((torch.cat([o_b.flatten(), lse_b.flatten()]), owner))
            if reader < rank:  # this rank's queries, held by `reader`, read its keys
                partial = qp.new_empty(b * length * h * d + b * h * length)
                recvs.append((partial, reader))
            _wait(ring.start(sends, recvs))
            if recvs:
                o_b, lse_b = partial.split([b * length * h * d, b * h * length])
                o, lse = merge(o, lse, o_b.view_as(o), lse_b.view_as(lse))
        ctx.save_for_backward(qp, kp, vp, o, lse)
        ctx.setup = (bounds, rank, group, scale)
        return o[:, : q.shape[1]]

    @staticmethod
    @float32_kernel
    def backward(ctx, do):  # type: ignore[override]
        qp, kp, vp, o, lse = ctx.saved_tensors
        bounds, rank, group, scale = ctx.setup
        size, t, length = len(bounds), do.shape[1], qp.shape[1]
        ring = _Ring(group, rank, size)
        do = _pad(do, length)
        delta = (do * o).sum(-1).transpose(1, 2)
        pos = block_positions(bounds, rank, rank, length, qp.device)
        dq, dk, dv = block_grads(qp, kp, vp, do, lse, delta, *pos, scale)
        sizes = [qp.numel(), do.numel(), lse.numel(), delta.numel()]
        held = torch.cat([x.flatten() for x in (qp, do, lse, delta)])
        for step in range(1, size):
            held, requests = ring.shift(held)
            _wait(requests)
            owner, reader = (rank - step) % size, (rank + step) % size
            sends, recvs = [], []
            if owner > rank:
                q_o, do_o, lse_o, delta_o = held.split(sizes)
                pos = block_positions(bounds, owner, rank, length, qp.device)
                dq_b, dk_b, dv_b = block_grads(
                    q_o.view_as(qp),
                    kp,
                    vp,
                    do_o.view_as(qp),
                    lse_o.view_as(lse),
                    delta_o.view_as(lse),
                    *pos,
                    scale,
                )
                dk, dv = dk + dk_b, dv + dv_b
                sends.append((dq_b, owner))
            if reader < rank:
                partial = torch.empty_like(dq, memory_format=torch.contiguous_format)
                recvs.append((partial, reader))
            _wait(ring.start(sends, recvs))
            if recvs:
                dq = dq + partial
        return dq[:, :t], dk[:, :t], dv[:, :t], None, None, None, None


def _in_float32(
    function: type[torch.autograd.Function],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bounds: Bounds,
    rank: int,
    group: Any,
    scale: float | None,
) -> Tensor:
    """`function` applied to q, k, v upcast to float32 (float64 stays) with autocast off (its
    backward turns it off with `float32_kernel`); the output in the inputs' dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = functools.reduce(torch.promote_types, (q.dtype, k.dtype, v.dtype))
    compute = torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        o = function.apply(*(x.to(compute) for x in (q, k, v)), tuple(bounds), rank, group, scale)
    return o.to(dtype)


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bounds: Bounds,
    rank: int,
    group: Any,
    scale: float | None = None,
) -> Tensor:
    """This rank's causal attention output `[B, T_r, H, D]`, K/V passed around the ring."""
    return _in_float32(RingAttention, q, k, v, bounds, rank, group, scale)


def token_ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bounds: Bounds,
    rank: int,
    group: Any,
    scale: float | None = None,
) -> Tensor:
    """This rank's causal attention output `[B, T_r, H, D]`, queries passed around the ring
    and partial outputs sent back (TokenRing's bidirectional scheme)."""
    return _in_float32(TokenRingAttention, q, k, v, bounds, rank, group, scale)


def check_ulysses_heads(n_heads: int, n_kv_heads: int, size: int) -> None:
    """A one-line ConfigError unless N divides both head counts."""
    if n_heads % size or n_kv_heads % size:
        raise ConfigError(
            f"train.sequence_parallel_attention ulysses needs the heads ({n_heads} query, "
            f"{n_kv_heads} key/value) divisible by train.sequence_parallel ({size}); use ring"
        )


def ulysses_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bounds: Bounds,
    rank: int,
    group: Any,
    scale: float | None = None,
) -> Tensor:
    """This rank's causal attention output `[B, T_r, H, D]` through two head/sequence
    all-to-alls (`torch.distributed.nn.functional.all_to_all_single`, whose backward is the
    reverse all-to-all): shards `[B, T_r, H, D]` → whole sequence `[B, T, H/N, D]` → back."""
    from torch.distributed.nn.functional import all_to_all_single

    size = len(bounds)
    check_ulysses_heads(q.shape[2], k.shape[2], size)
    lengths = [e - s for s, e in bounds]
    t = lengths[rank]

    def to_heads(x: Tensor) -> Tensor:
        b, _, h, d = x.shape
        x = x.reshape(b, t, size, h // size, d).permute(2, 1, 0, 3, 4).reshape(-1, b, h // size, d)
        out = x.new_empty(sum(lengths), b, h // size, d)
        out = all_to_all_single(out, x, lengths, [t] * size, group=group)
        return out.permute(1, 0, 2, 3)

    whole = scaled_dot_product_attention(*map(to_heads, (q, k, v)), is_causal=True, scale=scale)
    b, _, h_part, d = whole.shape
    x = whole.permute(1, 0, 2, 3).contiguous()
    out = all_to_all_single(
        x.new_empty(size * t, b, h_part, d), x, [t] * size, lengths, group=group
    )
    return out.reshape(size, t, b, h_part, d).permute(2, 1, 0, 3, 4).reshape(b, t, -1, d)


def sharded_attention(
    q: Tensor, k: Tensor, v: Tensor, bounds: Bounds, rank: int, group: Any, mode: str
) -> Tensor:
    """`mode` (one of MODES) of this rank's causal attention output `[B, T_r, H, D]`."""
    kernels = {
        "ring": ring_attention,
        "ring_bidirectional": token_ring_attention,
        "ulysses": ulysses_attention,
    }
    if mode not in kernels:
        raise SeqlabError(f"sequence-parallel attention must be one of {MODES}, got {mode!r}")
    return kernels[mode](q, k, v, bounds, rank, group)
