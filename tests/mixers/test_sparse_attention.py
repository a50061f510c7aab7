import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.attention import Attention
from seqlab.ops.attention import attention_reference
from seqlab.ops.sparse_attention import (
    block_topk_mask,
    block_topk_reference,
    sparse_transformer_mask,
    sparse_transformer_mask_reference,
)
from seqlab.testing import check_mixer

STRIDED = {"pattern": "strided", "stride": 3}
FIXED = {"pattern": "fixed", "stride": 4, "summary": 2}
TOPK = {"pattern": "block_topk", "block": 2, "segment": 4, "keep_blocks": 2}
ALL = [
    STRIDED,
    FIXED,
    {**STRIDED, "combine": "heads"},
    {**FIXED, "combine": "layers"},
    TOPK,
    {**TOPK, "keep_blocks": 0},
]


def mixer(sparsity, **kwargs):
    torch.manual_seed(0)
    m = Attention(32, 4, sparsity=sparsity, **kwargs).double()
    m.init_weights(0.3, 0.3)
    return m


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("stride,summary", [(1, 1), (3, 1), (4, 2), (5, 5)])
def test_sparse_transformer_mask_equals_the_papers_sets(pattern, part, stride, summary):
    t = torch.arange(17)
    fast = sparse_transformer_mask(t, t, pattern, stride, summary, part)
    assert torch.equal(fast, sparse_transformer_mask_reference(17, pattern, stride, summary, part))
    assert fast.any(-1).all()  # every query reads something (itself at least)


@pytest.mark.parametrize(
    "shape,block,segment,keep",
    [
        ((2, 13, 4, 2), 2, 4, 1),
        ((1, 29, 2, 1), 2, 6, 2),
        ((1, 1, 2, 2), 2, 4, 2),
        ((1, 21, 2, 2), 3, 3, 0),
    ],
)
def test_block_topk_equals_its_step_by_step_reference_forward_and_backward(
    shape, block, segment, keep
):
    """The vectorised selection + masked SDPA against the loop reference (sort each segment,
    score its blocks, gather the kept keys, softmax over them), float64, odd lengths."""
    b, t, h, h_kv = shape
    torch.manual_seed(1)
    q, k, v = (
        torch.randn(b, t, n, 8, dtype=torch.float64, requires_grad=True) for n in (h, h_kv, h_kv)
    )
    mask = block_topk_mask(q, k, block=block, segment=segment, keep=keep)
    fast = attention_reference(q, k, v, mask=mask)
    ref = block_topk_reference(q, k, v, block=block, segment=segment, keep=keep)
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, r in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


def test_block_topk_keeps_few_blocks_on_long_inputs():
    torch.manual_seed(2)
    q, k = torch.randn(1, 96, 2, 8), torch.randn(1, 96, 2, 8)
    mask = block_topk_mask(q, k, block=4, segment=16, keep=2)
    causal = torch.ones(96, 96, dtype=torch.bool).tril()
    assert not (mask & ~causal).any()
    # a query of the last segment reads its own segment and at most 3 blocks of 4 before it
    assert int(mask[0, :, 95, :80].sum(-1).max()) <= 12
    assert mask[0, :, 95, 80:].all()


@pytest.mark.parametrize("sparsity", ALL)
def test_mixer_equals_the_dense_masked_reference_forward_and_backward(sparsity):
    """The mixer's output is full softmax attention under its mask (attention_mask),
    written out (attention_reference), float64, forward and backward through x."""
    m = mixer(sparsity, n_kv_heads=2, layer=1)
    x = torch.randn(2, 19, 32, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    mask = m.attention_mask(x)
    q, k, v, _ = m._heads(x, None, None)
    ref = m.out(attention_reference(q, k, v, mask=mask).reshape(2, 19, 32))
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-10)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)
    assert not mask.all(-1)[..., 8:].any()  # sparse beyond the first tokens


@pytest.mark.parametrize("sparsity", ALL)
def test_conformance_kit_passes_for_every_pattern(sparsity):
    report = check_mixer(
        "attention", sparsity=sparsity, only=["split_decode", "causality", "state_size"]
    )
    assert report.ok, str(report)


def test_conformance_kit_chunk_split_and_learning_with_block_topk():
    report = check_mixer(
        "attention",
        sparsity={"pattern": "block_topk", "block": 4, "segment": 16, "keep_blocks": 1},
        only=["chunk_split", "save_load"],
    )
    assert report.ok, str(report)


def test_ragged_decode_selects_what_the_parallel_form_selects():
    """Rows prefilled with different lengths (left-padded cache) then decoded together equal
    each row's full pass."""
    m = mixer(TOPK)
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    full, _ = m(x)
    _, a = m(x[:1, :6], m.init_state(1, dtype=torch.float64))
    _, b = m(x[1:, :9], m.init_state(1, dtype=torch.float64))
    state = type(a).concat([a, b])
    for t in range(6):
        y, state = m(torch.stack([x[0, 6 + t], x[1, 9 + t]])[:, None], state)
        torch.testing.assert_close(y[0, 0], full[0, 6 + t], rtol=1e-9, atol=1e-10)
        if 9 + t < 15:
            torch.testing.assert_close(y[1, 0], full[1, 9 + t], rtol=1e-9, atol=1e-10)


def test_density_is_measured_and_counted_in_flops():
    m = mixer({"pattern": "strided", "stride": 8})
    x = torch.randn(1, 64, 32, dtype=torch.float64)
    mask = m.attention_mask(x)
    measured = mask.sum().item() / (4 * 64 * 65 / 2)
    assert m.attention_density(64) == pytest.approx(measured)
    dense = Attention(32, 4)
    assert m.attention_density(64) < 0.5 and dense.attention_density(64) == 1.0
    assert m.mixing_flops(64) == pytest.approx(dense.mixing_flops(64) * measured)
    long = mixer({"pattern": "strided", "context": 4096})
    assert long.sparsity.stride == 64 and long.attention_density(4096) < 0.05

    topk = mixer({"pattern": "block_topk", "block": 4, "segment": 16, "keep_blocks": 2})
    x = torch.randn(2, 80, 32, dtype=torch.float64)
    measured = topk.attention_mask(x).sum().item() / (2 * 4 * 80 * 81 / 2)
    assert measured <= topk.attention_density(80) + 1e-12
    assert topk.attention_density(80) - measured < 0.05  # only sink coincidences differ
    assert topk.mixing_flops(80) < dense.mixing_flops(80)


@pytest.mark.parametrize(
    "sparsity",
    [
        {"pattern": "dilated", "stride": 2},
        {"pattern": "strided"},
        {"pattern": "strided", "stride": 0},
        {"pattern": "fixed", "stride": 4, "summary": 5},
        {"pattern": "strided", "stride": 4, "combine": "random"},
        {"pattern": "block_topk", "block": 3, "segment": 8},
        {"pattern": "block_topk", "keep_blocks": -1},
        {"pattern": "strided", "stride": 4, "width": 2},
        {"pattern": "strided", "stride": "four"},
        "strided",
    ],
)
def test_bad_sparsity_options_are_config_errors(sparsity):
    with pytest.raises(ConfigError):
        Attention.from_config(ModelConfig(d_model=32, n_heads=4), 0, sparsity=sparsity)


def test_sparsity_is_causal_only_and_excludes_window():
    with pytest.raises(ConfigError):
        Attention(32, 4, window=4, sparsity=STRIDED)
    m = mixer(STRIDED)
    assert [k.value for k in m.layouts] == ["causal"]
    with pytest.raises(SeqlabError):
        m(torch.randn(1, 4, 32, dtype=torch.float64), layout=Layout.BIDIRECTIONAL)
    assert Attention(32, 4).layouts != m.layouts  # the default stays dense with every layout
