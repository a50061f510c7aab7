"""Sparse attention masks: the Sparse Transformer patterns and permuted block-sparse top-k.

Masks are boolean, True where a query may read a key (the SDPA convention), and always
causal. Positions are absolute token indices.

**Sparse Transformer** (Child et al., 2019, section 4.2), stride ℓ, query i, key j ≤ i:
- strided: A1 = {j : i − j ≤ ℓ} (the previous ℓ positions and i itself),
  A2 = {j : (i − j) mod ℓ = 0} (every ℓ-th position back from i);
- fixed: A1 = {j : ⌊j/ℓ⌋ = ⌊i/ℓ⌋} (the current block of ℓ),
  A2 = {j : j mod ℓ ≥ ℓ − c} (the last c "summary" positions of every block), plus j = i so
  that no query reads nothing.
`part` 0 is the merged head A1 ∪ A2, 1 is A1, 2 is A2.

**Permuted block-sparse top-k** (after PBS-Attn, Wang et al., 2025): `block_topk_mask`.
What follows the paper's public code (github.com/xinghaow99/pbs-attn, read, not copied):
keys (with their values) are permuted within segments, queries are not; a key's importance
is the softmax attention of a last block of queries averaged over those queries, keys sorted
by it descending; blocks are scored by mean-pooled query · mean-pooled key / √D; the diagonal
segment is always computed (causally within) and the block holding token 0 is always kept;
attention is exact softmax over the kept keys. What differs, so that the layer is causal and
decoding equals the parallel form (the paper's method is for prefilling and reads the future):
(1) the paper's proxy queries are the last block of the whole prompt, normalised over every
key; here each segment is sorted by its own last query block, normalised over that segment's
readable keys, once the segment is complete; (2) the paper keeps blocks up to a cumulative
softmax mass threshold of the current query block's pooled scores; here the top `keep`
blocks are kept, scored with the pooled query of the previous block (the current block's
later queries are the future). Not confirmed: the paper's text (only its abstract and code
were readable here), so whether its proxy and selection differ from its code is unknown.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PATTERNS = ("strided", "fixed", "block_topk")


def sparse_transformer_mask(
    q_pos: Tensor, k_pos: Tensor, pattern: str, stride: int, summary: int = 1, part: int = 0
) -> Tensor:
    """Boolean `[..., T_q, T_k]` from positions `q_pos [..., T_q]` and `k_pos [..., T_k]`
    (broadcast against each other): pattern A1 ∪ A2 (`part` 0), A1 (1) or A2 (2), causal."""
    i, j = q_pos[..., :, None], k_pos[..., None, :]
    causal = j <= i
    if pattern == "strided":
        first, second = i - j <= stride, (i - j) % stride == 0
    elif pattern == "fixed":
        first = torch.div(i, stride, rounding_mode="floor") == torch.div(
            j, stride, rounding_mode="floor"
        )
        second = (j % stride >= stride - summary) | (i == j)
    else:
        raise ValueError(f"unknown Sparse Transformer pattern {pattern!r}")
    chosen = (first | second, first, second)[part]
    return causal & chosen


def sparse_transformer_mask_reference(
    t: int, pattern: str, stride: int, summary: int = 1, part: int = 0
) -> Tensor:
    """`[t, t]` by the sets of the paper written out pair by pair (for the tests)."""
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(i + 1):
            if pattern == "strided":
                a1, a2 = j >= max(0, i - stride), (i - j) % stride == 0
            else:
                a1 = j // stride == i // stride
                a2 = j % stride in range(stride - summary, stride) or j == i
            mask[i, j] = (a1 or a2, a1, a2)[part]
    return mask


def block_topk_mask(q: Tensor, k: Tensor, *, block: int, segment: int, keep: int) -> Tensor:
    """Causal permuted block-sparse mask `[B, H, L, L]` over position-aligned queries
    `q [B, L, H, D]` and keys `k [B, L, H_kv, D]` (index = position; H a multiple of H_kv).

    Segments of S = `segment` positions hold m = S / b blocks of b = `block`. For every head:
    1. Key permutation, per complete segment s: the importance of key j in s is
       mean over the queries i of s's last block of softmax_j'(q_i·k_j' / √D) over the keys j'
       of s that i may read (j' ≤ i); keys are sorted by importance, descending (ties by
       position), and the sorted keys are cut into m permuted blocks.
    2. Block selection, per query block n of segment σ ≥ 1: score every permuted block P of
       segments < σ by q̄_{n−1}·k̄_P / √D (block means; q̄_{n−1} the mean query of the block
       before n, the latest complete one) and keep the `keep` best, plus the permuted block
       holding position 0 (the attention sink the paper always keeps).
    3. Every query reads its own segment causally (the diagonal blocks) and the kept blocks.
    A query block's selection reads only queries and keys before it, so decoding with a
    cache selects what the parallel form selects. Rows shorter than L may hold anything past
    their length: no query of theirs reads it.
    """
    batch, length, heads, dim = q.shape
    k = k.repeat_interleave(heads // k.shape[2], dim=2)
    pos = torch.arange(length, device=q.device)
    seg = pos // segment
    mask = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    mask = mask[None, None].expand(batch, heads, length, length)
    n_seg, m = length // segment, segment // block
    if seg[-1] == 0:
        return mask
    scale = dim**-0.5
    ks = k[:, : n_seg * segment].unflatten(1, (n_seg, segment)).permute(0, 1, 3, 2, 4)
    last = q[:, : n_seg * segment].unflatten(1, (n_seg, segment))[:, :, segment - block :]
    scores = torch.einsum("bnihd,bnhjd->bnhij", last, ks) * scale  # [B, n, H, b, S]
    reads = pos[None, :segment] <= pos[segment - block : segment, None]
    importance = scores.masked_fill(~reads, -math.inf).softmax(-1).mean(-2)  # [B, n, H, S]
    order = importance.detach().argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, pos[:segment].expand_as(order))
    permuted_block = rank // block  # [B, n, H, S]
    k_sorted = ks.gather(3, order[..., None].expand_as(ks))
    k_bar = k_sorted.unflatten(3, (m, block)).mean(4)  # [B, n, H, m, D]

    n_q = (length - 1) // block + 1  # query blocks, the last maybe partial
    q_bar = q[:, : (length // block) * block].unflatten(1, (-1, block)).mean(2)  # [B, nb, H, D]
    first = m  # query blocks before it lie in segment 0 and select nothing
    prev = q_bar[:, first - 1 : n_q - 1]  # [B, n_q - m, H, D]
    block_scores = torch.einsum("bihd,bnhjd->bhinj", prev, k_bar) * scale
    q_seg = torch.arange(first, n_q, device=q.device) // m
    candidate = torch.arange(n_seg, device=q.device)[None, :] < q_seg[:, None]  # [n_q', n]
    block_scores = block_scores.detach().masked_fill(~candidate[None, None, :, :, None], -math.inf)
    flat = block_scores.flatten(3)  # [B, H, n_q', n·m]
    top = flat.topk(min(keep, flat.shape[-1]), dim=-1).indices
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, top, True)
    chosen &= flat > -math.inf
    chosen = chosen.unflatten(3, (n_seg, m))  # [B, H, n_q', n, m]
    sink = permuted_block[:, 0, :, 0]  # [B, H]: the permuted block holding position 0
    chosen[:, :, :, 0] |= torch.arange(m, device=q.device) == sink[:, :, None, None]

    # key j of segment s < σ is read by query block n iff its permuted block is chosen
    key_block = permuted_block.permute(0, 2, 1, 3)[:, :, None].expand(-1, -1, n_q - first, -1, -1)
    key_read = chosen.gather(4, key_block).flatten(3)  # [B, H, n_q', n·S]
    key_read = key_read & (seg[: n_seg * segment][None, :] < q_seg[:, None])
    rows = key_read.repeat_interleave(block, dim=2)[:, :, : length - first * block]
    extra = torch.zeros_like(mask)
    extra[:, :, first * block :, : n_seg * segment] = rows
    return mask | extra


def block_topk_reference(
    q: Tensor, k: Tensor, v: Tensor, *, block: int, segment: int, keep: int
) -> Tensor:
    """Step by step, query by query: which keys `block_topk_mask` keeps, read from the
    description (loops, Python sorting), and softmax attention over just those keys.
    q `[B, L, H, D]`, k and v `[B, L, H_kv, D]` -> `[B, L, H, D]`."""
    batch, length, heads, dim = q.shape
    group = heads // k.shape[2]
    scale = dim**-0.5
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            kh, vh, qh = k[b, :, h // group], v[b, :, h // group], q[b, :, h]
            blocks = []  # per complete segment: its permuted blocks, lists of positions
            for s in range(length // segment):
                keys = range(s * segment, (s + 1) * segment)
                weight = dict.fromkeys(keys, 0.0)
                for i in range((s + 1) * segment - block, (s + 1) * segment):
                    readable = [j for j in keys if j <= i]
                    logits = torch.stack([qh[i] @ kh[j] * scale for j in readable])
                    for j, p in zip(readable, logits.softmax(0).tolist(), strict=True):
                        weight[j] += p / block
                ranked = sorted(keys, key=lambda j: (-weight[j], j))
                blocks.append([ranked[c : c + block] for c in range(0, segment, block)])
            for t in range(length):
                sigma, n = t // segment, t // block
                read = list(range(sigma * segment, t + 1))
                if sigma > 0:
                    q_prev = qh[(n - 1) * block : n * block].mean(0)
                    scored = [
                        (float((q_prev @ kh[p].mean(0)).detach() * scale), s, c)
                        for s in range(sigma)
                        for c, p in enumerate(blocks[s])
                    ]
                    scored.sort(key=lambda x: -x[0])
                    kept = {(s, c) for _, s, c in scored[:keep]}
                    kept |= {(0, c) for c, p in enumerate(blocks[0]) if 0 in p}
                    read += [j for s, c in sorted(kept) for j in blocks[s][c]]
                logits = torch.stack([qh[t] @ kh[j] * scale for j in read])
                out[b, t, h] = logits.softmax(0) @ vh[read]
    return out
