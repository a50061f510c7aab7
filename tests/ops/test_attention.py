import pytest
import torch

from seqlab.ops.attention import (
    apply_rotary,
    attention_reference,
    block_causal_mask,
    block_diffusion_mask,
    causal_mask,
    prefix_mask,
    rotary_angles,
    scaled_dot_product_attention,
)


def brute_mask(t_q, t_k, rule):
    return torch.tensor([[rule(i + t_k - t_q, j) for j in range(t_k)] for i in range(t_q)])


@pytest.mark.parametrize("t_q,t_k,window", [(5, 5, None), (3, 7, None), (6, 6, 2), (1, 9, 4)])
def test_causal_mask_matches_definition(t_q, t_k, window):
    expected = brute_mask(t_q, t_k, lambda p, j: j <= p and (window is None or p - j < window))
    assert torch.equal(causal_mask(t_q, t_k, window=window), expected)


def test_block_causal_mask_matches_definition():
    expected = brute_mask(7, 7, lambda i, j: j // 3 <= i // 3)
    assert torch.equal(block_causal_mask(7, 3), expected)
    assert torch.equal(block_causal_mask(5, 1), causal_mask(5))


def test_block_diffusion_mask_matches_definition():
    length, block = 6, 2

    def rule(i, j):
        noisy_i, noisy_j = i < length, j < length
        bi, bj = (i % length) // block, (j % length) // block
        if noisy_i and noisy_j:
            return bi == bj
        if noisy_i:
            return bj < bi
        if noisy_j:
            return False
        return bj <= bi

    assert torch.equal(block_diffusion_mask(length, block), brute_mask(12, 12, rule))


def test_prefix_mask_makes_cached_keys_visible():
    mask = prefix_mask(causal_mask(3), 4)
    assert mask.shape == (3, 7) and mask[:, :4].all() and torch.equal(mask[:, 4:], causal_mask(3))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("masking", ["causal", "block", "none"])
def test_sdpa_matches_reference_float64_forward_and_backward(heads, kv_heads, masking):
    t, d = 9, 8
    q = torch.randn(2, t, heads, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, t, kv_heads, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, t, kv_heads, d, dtype=torch.float64, requires_grad=True)
    mask = {"causal": causal_mask(t), "block": block_causal_mask(t, 4), "none": None}[masking]
    fast = scaled_dot_product_attention(q, k, v, mask=mask)
    slow = attention_reference(q, k, v, mask=mask)
    torch.testing.assert_close(fast, slow)
    weight = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * weight).sum(), (q, k, v))
    g_slow = torch.autograd.grad((slow * weight).sum(), (q, k, v))
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b)


def test_rotary_scores_depend_only_on_relative_position():
    d = 16
    q = torch.randn(1, 1, 1, d, dtype=torch.float64)
    k = torch.randn(1, 1, 1, d, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rotary_angles(torch.tensor([[pq]]), d, dtype=torch.float64)
        ck, sk = rotary_angles(torch.tensor([[pk]]), d, dtype=torch.float64)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.isclose(score(7, 3), score(7, 4))


def test_rotary_preserves_norm():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    cos, sin = rotary_angles(torch.arange(5)[None], 8, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
