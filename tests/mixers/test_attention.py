import pytest
import torch

from seqlab.errors import ShapeError
from seqlab.layout import Layout
from seqlab.mixers.attention import Attention
from seqlab.ops.attention import block_causal_mask
from seqlab.state import reorder_state


def mixer(**kwargs):
    m = Attention(32, 4, **kwargs).double()
    m.init_weights(0.2, 0.2)
    return m


@pytest.mark.parametrize("kwargs", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "qk_norm": True}])
def test_decode_matches_full_sequence_with_gqa(kwargs):
    m = mixer(**kwargs)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    full, _ = m(x)
    state = m.init_state(2, dtype=torch.float64)
    outs = []
    for t in range(10):
        y, state = m(x[:, t : t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert int(state.offset[0]) == 10 and state.k.shape[1] == 10


def test_sliding_window_decode_matches_full_and_trims_cache():
    m = mixer(window=3)
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    full, _ = m(x)
    state = m.init_state(1, dtype=torch.float64)
    outs = []
    for t in range(12):
        y, state = m(x[:, t : t + 1], state)
        outs.append(y)
        assert state.k.shape[1] <= 3
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert m.state_size(1000) == m.state_size(3)


def test_sliding_window_ignores_far_past():
    m = mixer(window=3)
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 0] += 5.0
    y2, _ = m(x2)
    torch.testing.assert_close(y[:, 3:], y2[:, 3:])
    assert not torch.allclose(y[:, 2], y2[:, 2])


def test_block_causal_layout_follows_mask():
    m = mixer()
    x = torch.randn(1, 8, 32, dtype=torch.float64, requires_grad=True)
    y, _ = m(x, layout=Layout.block_causal(4))
    mask = block_causal_mask(8, 4)
    for t in range(8):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        reads = g[0].abs().sum(-1) > 0
        assert torch.equal(reads, mask[t])


def test_bidirectional_block_continues_from_cache():
    """A block run bidirectionally on top of a cached prefix equals the same positions in a
    full block-causal pass (what block diffusion sampling relies on)."""
    m = mixer()
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    full, _ = m(x, layout=Layout.block_causal(4))
    _, state = m(x[:, :4], m.init_state(1, dtype=torch.float64), layout=Layout.block_causal(4))
    block, _ = m(x[:, 4:], state, layout=Layout.BIDIRECTIONAL)
    torch.testing.assert_close(block, full[:, 4:])


def test_explicit_positions_shift_rotary():
    m = mixer()
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    base, _ = m(x)
    shifted, _ = m(x, positions=torch.arange(100, 105))
    torch.testing.assert_close(base, shifted)  # relative positions unchanged
    with pytest.raises(ShapeError, match=r"\[5\]"):
        m(x, positions=torch.arange(4))


def test_padding_keys_are_never_read():
    m = mixer()
    _, state = m(torch.randn(1, 4, 32, dtype=torch.float64), m.init_state(1, dtype=torch.float64))
    state.positions[:, :2] = -1
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    y, _ = m(x, state)
    state.k[:, :2] = 1e3
    state.v[:, :2] = -1e3
    y_garbage, _ = m(x, state)
    torch.testing.assert_close(y, y_garbage)


def test_reorder_state_selects_rows():
    m = mixer()
    x = torch.randn(3, 4, 32, dtype=torch.float64)
    _, state = m(x, m.init_state(3, dtype=torch.float64))
    picked = reorder_state(state, torch.tensor([2, 2, 0]))
    assert torch.equal(picked.k[0], state.k[2]) and torch.equal(picked.k[2], state.k[0])


def test_wrong_input_shape_names_expected_shape():
    with pytest.raises(ShapeError, match=r"\[B, T, 32\]"):
        mixer()(torch.randn(2, 5, 31, dtype=torch.float64))


def test_block_diffusion_layout_follows_mask_with_shared_positions():
    from seqlab.ops.attention import block_diffusion_mask

    m = mixer()
    x = torch.randn(1, 8, 32, dtype=torch.float64, requires_grad=True)
    positions = torch.cat([torch.arange(4), torch.arange(4)])
    y, _ = m(x, layout=Layout.block_diffusion(2), positions=positions)
    mask = block_diffusion_mask(4, 2)
    for t in range(8):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert torch.equal(g[0].abs().sum(-1) > 0, mask[t])
    # the clean half computes exactly a block-causal pass over x_0 alone
    clean, _ = m(x[:, 4:], layout=Layout.block_causal(2))
    torch.testing.assert_close(y[:, 4:], clean)
