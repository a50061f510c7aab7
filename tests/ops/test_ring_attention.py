"""The chunked block kernels of `seqlab.ops.ring_attention` against the whole-block reference,
float64, forward and backward, on odd shapes (chunks not dividing the block, one query, padded
keys, grouped-query heads, rows that read no key)."""

from __future__ import annotations

import pytest
import torch

from seqlab.ops.ring_attention import (
    block_attention,
    block_attention_reference,
    block_grads,
    block_positions,
)


@pytest.mark.parametrize(
    ("bounds", "q_rank", "k_rank", "chunk"),
    [
        ([(0, 13)], 0, 0, 4),  # a diagonal block, 13 = 3 · 4 + 1
        ([(0, 6), (6, 13)], 1, 0, 4),  # an earlier rank's padded keys
        ([(0, 6), (6, 13)], 1, 1, 3),
        ([(0, 1), (1, 13)], 0, 0, 4),  # one real query, eleven padded rows
        ([(0, 7), (7, 8)], 1, 1, 5),  # the padded rows of rank 1 read nothing of rank 0's
        ([(0, 5), (5, 13)], 0, 1, 4),  # a block wholly in the future: every row reads nothing
    ],
)
def test_chunked_block_equals_whole_block_forward_and_backward(bounds, q_rank, k_rank, chunk):
    length = max(e - s for s, e in bounds)
    generator = torch.Generator().manual_seed(length + chunk)
    q = torch.randn(2, length, 4, 5, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(2, length, 2, 5, generator=generator, dtype=torch.float64) for _ in "kv")
    do = torch.randn(2, length, 4, 5, generator=generator, dtype=torch.float64)
    pos = block_positions(bounds, q_rank, k_rank, length, "cpu")
    scale = 5**-0.5

    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    o_ref, lse_ref = block_attention_reference(*inputs, *pos, scale)
    grads_ref = torch.autograd.grad((o_ref * do).sum(), inputs, allow_unused=True)

    o, lse = block_attention(q, k, v, *pos, scale, chunk=chunk)
    torch.testing.assert_close(o, o_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref.detach(), rtol=1e-12, atol=1e-12)
    if k_rank > q_rank:  # the real queries read nothing: ℓ = −∞, o = 0
        real = bounds[q_rank][1] - bounds[q_rank][0]
        assert torch.isinf(lse[..., :real]).all() and not o[:, :real].any()

    delta = (do * o).sum(-1).transpose(1, 2)
    grads = block_grads(q, k, v, do, lse, delta, *pos, scale, chunk=chunk)
    for grad, reference in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)
