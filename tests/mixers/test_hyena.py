import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.hyena import DIRECT_STEPS, Hyena
from seqlab.state import can_drop_last, stack_states
from seqlab.testing import check_mixer

F64 = torch.float64
FAST = ["split_decode", "chunk_split", "causality", "state_size", "save_load"]


def mixer(**options) -> Hyena:
    torch.manual_seed(0)
    m = Hyena(16, **{"chunk_size": 4, "max_len": 64, **options}).double()
    m.init_weights(0.2, 0.2)
    return m


def reference(m: Hyena, x: torch.Tensor) -> torch.Tensor:
    """The operator written out: every long convolution a sum over s <= t, one output at a time."""
    u, _ = m.conv(m.in_proj(x))
    v, *gates = u.chunk(m.order + 1, dim=-1)
    steps = x.shape[1]
    h = m.filter(steps)
    z = v
    for n, gate in enumerate(gates):
        out = []
        for t in range(steps):
            long = sum(h[t - s, n] * z[:, s] for s in range(t + 1))
            out.append(gate[:, t] * (long + m.D[n] * z[:, t]))
        z = torch.stack(out, dim=1)
    return m.out(z)


@pytest.mark.parametrize("options", [{}, {"order": 1}, {"order": 3, "chunk_size": 4}])
def test_hyena_passes_the_conformance_kit(options):
    report = check_mixer("hyena", only=FAST, **options)
    assert report.ok, str(report)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 13, 21])
def test_blocked_fft_form_equals_the_direct_loop_forward_and_backward_float64(steps, order):
    m = mixer(order=order)
    x = torch.randn(2, steps, 16, dtype=F64, requires_grad=True)
    w = torch.randn(2, steps, 16, dtype=F64)
    params = [x, *m.parameters()]
    y = m(x)[0]
    expected = reference(m, x)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)
    got = torch.autograd.grad((y * w).sum(), params)
    want = torch.autograd.grad((expected * w).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "splits",
    [[1] * 23, [5, 1, 1, 16], [DIRECT_STEPS + 1, 1, 13], [23], [2, 21]],
    ids=["token-by-token", "prefill-5", "prefill-long", "one-call", "long-tail"],
)
def test_prefill_and_decode_equal_the_full_forward_float64(splits):
    m = mixer()
    x = torch.randn(2, 23, 16, dtype=F64)
    full, _ = m(x)
    state, parts, start = m.init_state(2, dtype=F64), [], 0
    for size in splits:
        y, state = m(x[:, start : start + size], state)
        parts.append(y)
        start += size
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-10)
    assert state.history.streams.shape == (2, 23, m.order, m.d_inner)
    assert m.state_size(23) == 23 * m.order * m.d_inner + m.conv.state_size()


def test_rows_of_different_lengths_decode_as_alone_after_stacking():
    m = mixer()
    x = torch.randn(2, 12, 16, dtype=F64)
    _, short = m(x[:1, :4], m.init_state(1, dtype=F64))
    _, long = m(x[1:, :9], m.init_state(1, dtype=F64))
    both = stack_states([short, long])
    assert both.history.streams.shape[1] == 9
    y, _ = m(torch.stack([x[0, 4:6], x[1, 9:11]]), both)
    alone = [m(x[:1, :6])[0][:, 4:], m(x[1:, :11])[0][:, 9:]]
    torch.testing.assert_close(y, torch.cat(alone), rtol=1e-9, atol=1e-10)
    assert not can_drop_last(both)
    with pytest.raises(SeqlabError, match="re-run"):
        both.history.drop_last(1)


def test_filters_are_functions_of_the_lag_with_the_decay_window():
    m = mixer(max_len=32)
    torch.testing.assert_close(m.filter(5), m.filter(40)[:5], rtol=0, atol=0)
    rates = m.filter.decays
    assert rates[0] == pytest.approx(-math.log(1e-2) / 1.5)
    assert rates[-1] == pytest.approx(-math.log(1e-2) / 0.3)
    windowed = m.filter(32)
    bare = Hyena(16, max_len=32, chunk_size=4, modulate=False).double()
    bare.load_state_dict(m.state_dict())
    window = torch.exp(-torch.arange(32, dtype=F64)[:, None] / 31 * rates)
    torch.testing.assert_close(windowed, bare.filter(32) * window[:, None], rtol=1e-12, atol=0)
    pe = m.filter.positional(32)
    assert pe.shape == (32, 33)
    torch.testing.assert_close(pe[:, 0], torch.arange(32, dtype=F64) / 31)


def test_mixing_matrix_reproduces_the_output():
    m = mixer()
    x = torch.randn(2, 11, 16, dtype=F64)
    mixing = m.mixing(x)
    assert mixing.matrix.shape == (2, 16, 11, 11)
    assert torch.equal(mixing.matrix.triu(1), torch.zeros_like(mixing.matrix))
    rebuilt = torch.einsum("bhts,bsh->bth", mixing.matrix, mixing.values[..., 0])
    torch.testing.assert_close(rebuilt, mixing.output[..., 0], rtol=1e-9, atol=1e-10)


def test_state_and_flops_grow_with_the_context():
    m = Hyena(128)
    assert m.state_size(4096) - m.state_size(2048) == 2048 * 2 * 128
    flops = [m.mixing_flops(t) for t in (64, 1024, 16384)]
    assert flops[0] < flops[1] < flops[2] < 2 * flops[1]  # O(log² T), far from O(T)
    assert flops[0] > m.filter.flops()


def test_only_the_causal_layout():
    m = mixer()
    with pytest.raises(SeqlabError, match="causal layout only"):
        m(torch.randn(1, 4, 16, dtype=F64), layout=Layout.BIDIRECTIONAL)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"order": 0}, "order"),
        ({"filter_order": 0}, "filter_order"),
        ({"short_conv": 0}, "short_conv"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"emb_dim": 4}, "emb_dim"),
        ({"emb_dim": 1}, "emb_dim"),
        ({"max_len": 1}, "max_len"),
        ({"fast_decay": 2.0}, "fast_decay"),
        ({"fast_decay": 0.0}, "fast_decay"),
        ({"sine_freq": 0.0}, "sine_freq"),
        ({"modulate": "yes"}, "modulate"),
        ({"heads": 2}, "unknown option"),
    ],
)
def test_bad_options_raise_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        Hyena.from_config(ModelConfig(mixer="hyena", d_model=16), **options)
