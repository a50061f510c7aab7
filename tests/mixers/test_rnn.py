import dataclasses
import math

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.lru import LRU
from seqlab.mixers.mingru import MinGRU
from seqlab.model import build_mixer, build_model
from seqlab.registry import MIXERS

F64 = torch.float64

# Every mixer built on the scan mixers' shared rules (scan layouts, float32 states), with options
# that differ from the defaults so that a round trip must carry them.
SCAN_MIXERS = {
    "mingru": {"conv_size": 0, "expand": 2},
    "lstm": {"expand": 2},
    "gru": {},
    "s4d": {"init": "inv", "d_state": 4},
    "mamba": {"negative_eigenvalues": True, "d_state": 4},
    "lru": {"d_state": 8, "r_min": 0.5},
}


def g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def mingru_loop(m: MinGRU, x: torch.Tensor) -> torch.Tensor:
    """Reference in linear space: h_t = (1 − z_t) h_{t−1} + z_t g(h̃_t), one step at a time."""
    if m.conv is not None:
        x, _ = m.conv(x)
    k, pre = m.proj(x).chunk(2, dim=-1)
    h = torch.zeros(x.shape[0], m.hidden, dtype=x.dtype)
    hs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(k[:, t])
        h = (1 - z) * h + z * g(pre[:, t])
        hs.append(h)
    return m.out(torch.stack(hs, 1))


@pytest.mark.parametrize("conv_size", [0, 4])
def test_mingru_log_space_scan_matches_step_loop_forward_and_backward_float64(conv_size):
    m = MinGRU(12, expand=2, conv_size=conv_size).double()
    m.init_weights(0.5, 0.5)
    x = torch.randn(3, 37, 12, dtype=F64)
    weight = torch.randn(3, 37, 12, dtype=F64)
    results = []
    for forward in (lambda v: m(v)[0], lambda v: mingru_loop(m, v)):
        leaf = x.clone().requires_grad_()
        y = forward(leaf)
        grads = torch.autograd.grad((y * weight).sum(), [leaf, *m.parameters()])
        results.append((y, grads))
    (y, grads), (y_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-10)


def test_mingru_hidden_state_stays_positive():
    m = MinGRU(8, conv_size=0)
    m.init_weights(3.0, 1.0)
    x = 10 * torch.randn(2, 200, 8)
    state = m.init_state(2)
    for piece in x.split(50, dim=1):
        _, state = m(piece, state)
        assert (state.h > 0).all() and torch.isfinite(state.h).all()


def test_lstm_forget_gate_bias_starts_at_one():
    m = build_mixer("lstm", ModelConfig(mixer="lstm", d_model=8), 0)
    m.init_weights(0.02, 0.01)
    forget = (m.rnn.bias_ih_l0 + m.rnn.bias_hh_l0)[8:16]
    torch.testing.assert_close(forget, torch.ones(8))


def test_lru_ring_init_and_gamma_normalisation():
    m = LRU(8, d_state=4096, r_min=0.4, r_max=0.9, max_phase=math.pi)
    m.init_weights(0.02, 0.01)
    radius, phase = m.eigenvalues().abs(), m.eigenvalues().angle() % (2 * math.pi)
    assert radius.min() >= 0.4 - 1e-6 and radius.max() <= 0.9 + 1e-6
    assert phase.max() <= math.pi + 1e-6
    # uniform by area: |λ|² is uniform on [r_min², r_max²]
    assert abs((radius**2).mean().item() - (0.4**2 + 0.9**2) / 2) < 0.01
    torch.testing.assert_close(m.gamma_log.exp(), (1 - radius**2).sqrt())


def test_lru_scan_matches_step_loop_float64():
    m = LRU(6, d_state=5).double()
    m.init_weights(0.3, 0.3)
    x = torch.randn(2, 19, 6, dtype=F64)
    re, im = m.in_proj(x).chunk(2, dim=-1)
    inputs = m.gamma_log.exp() * torch.complex(re, im)
    h = torch.zeros(2, 5, dtype=torch.complex128)
    hs = []
    for t in range(19):
        h = m.eigenvalues() * h + inputs[:, t]
        hs.append(h)
    h = torch.stack(hs, 1)
    expected = m.out(torch.cat([h.real, h.imag], dim=-1)) + m.D * x
    torch.testing.assert_close(m(x)[0], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", SCAN_MIXERS)
def test_save_load_round_trip_gives_identical_logits(name, tmp_path):
    config = ModelConfig(
        mixer=name,
        d_model=16,
        n_layers=2,
        n_heads=2,
        vocab_size=32,
        mixer_options={name: SCAN_MIXERS[name]},
    )
    model = build_model(config)
    tokens = torch.randint(0, 32, (2, 9))
    loaded = seqlab.load(seqlab.save(model, tmp_path / name))
    assert loaded.config == config
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0], rtol=0, atol=0)
    state_a, state_b = model.init_state(2), loaded.init_state(2)
    for t in range(9):
        logits_a, state_a = model(tokens[:, t : t + 1], state_a)
        logits_b, state_b = loaded(tokens[:, t : t + 1], state_b)
        torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)


@pytest.mark.parametrize("name", SCAN_MIXERS)
def test_option_typo_names_the_valid_options(name):
    valid = list(MIXERS.get(name).target.option_defaults())
    typo = valid[0][:-1]
    config = ModelConfig(mixer=name, d_model=16, mixer_options={name: {typo: 2}})
    with pytest.raises(ConfigError, match=rf"unknown option\(s\) \['{typo}'\]") as error:
        build_model(config)
    assert all(option in str(error.value) for option in valid)


@pytest.mark.parametrize("name", SCAN_MIXERS)
def test_layouts_that_cannot_continue_from_a_state_refuse_one(name):
    m = build_mixer(name, ModelConfig(mixer=name, d_model=16), 0)
    x = torch.randn(1, 4, 16)
    if name == "s4d":  # the two-sided FFT kernel has no state, and no block layouts
        with pytest.raises(SeqlabError, match="bidirectional layout .without a state"):
            m(x, m.init_state(1), layout=Layout.BIDIRECTIONAL)
        with pytest.raises(SeqlabError, match="s4d supports"):
            m(x, layout=Layout.block_causal(2))
    else:
        with pytest.raises(SeqlabError, match="cannot continue from a state"):
            m(x, m.init_state(1), layout=Layout.block_diffusion(2))


@pytest.mark.parametrize("name", SCAN_MIXERS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_states_are_kept_in_float32_or_float64(name, dtype):
    m = build_mixer(name, ModelConfig(mixer=name, d_model=16), 0).to(dtype)
    state = m.init_state(2)
    _, state = m(torch.randn(2, 3, 16, dtype=dtype), state)
    tensors = [getattr(state, f.name) for f in dataclasses.fields(state)]
    tensors = [t for t in tensors if t is not None]
    assert tensors and all(t.dtype == dtype for t in tensors)
    assert sum(t[0].numel() for t in tensors) == m.state_size(3)


def test_invalid_option_values_raise_config_error():
    bad = {
        "s4d": {"init": "legs"},
        "mamba": {"dt_rank": 0},
        "mingru": {"conv_size": -1},
        "gru": {"expand": 0},
    }
    for name, options in bad.items():
        with pytest.raises(ConfigError, match=name):
            build_model(ModelConfig(mixer=name, d_model=16, mixer_options={name: options}))
