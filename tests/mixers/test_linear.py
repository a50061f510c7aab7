"""The linear-recurrent mixers: linear_attention, retnet, gla, mamba2, deltanet, gated_deltanet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.deltanet import DeltaNet
from seqlab.mixers.gated_deltanet import GatedDeltaNet
from seqlab.mixers.linear_recurrence import LinearRecurrence
from seqlab.mixers.mamba2 import Mamba2, signed_gla, signed_log_decay
from seqlab.mixers.retnet import retnet_decays
from seqlab.model import build_mixer, build_model

F64 = torch.float64
NAMES = ["linear_attention", "retnet", "gla", "mamba2", "deltanet", "gated_deltanet"]
NEGATIVE = ["mamba2", "deltanet", "gated_deltanet"]
# lightnet's state adds a running normaliser to LinearState, so only the kernel-mode and
# block tests (VARIANTS) cover it; its state size is checked by the conformance kit
VARIANTS = [
    *((n, {}) for n in [*NAMES, "lightnet"]),
    *((n, {"negative_eigenvalues": True}) for n in NEGATIVE),
]


def make(name: str, dtype: torch.dtype = F64, **options) -> LinearRecurrence:
    config = ModelConfig(mixer=name, d_model=16, n_heads=2, mixer_options={name: options})
    mixer = build_mixer(name, config, 0)
    mixer.init_weights(0.2, 0.2)
    if isinstance(mixer, Mamba2 | GatedDeltaNet):
        with torch.no_grad():  # large steps: decays far from 1 (and negative ones for mamba2)
            mixer.dt_bias.uniform_(-1.0, 2.0)
    return mixer.to(dtype)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_chunk_and_recurrent_kernel_modes_agree_in_mixer_float64(name, options):
    mixer = make(name, chunk_size=8, **options)  # 19 tokens: three chunks, the last partial
    x = torch.randn(2, 19, 16, dtype=F64)
    weight = torch.randn(2, 19, 16, dtype=F64)
    results = []
    for mode in ("chunk", "recurrent"):
        mixer.kernel_mode = mode
        leaves = [x.clone().requires_grad_(), *mixer.parameters()]
        y, _ = mixer(leaves[0])
        results.append((y, torch.autograd.grad((y * weight).sum(), leaves)))
    (y, grads), (y_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    names = ["x", *(n for n, _ in mixer.named_parameters())]
    for what, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-11, msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_the_numbers_in_the_decode_state(name):
    mixer = make(name)
    state = mixer.init_state(3)
    kept = state.recurrent[0].numel() + (0 if state.conv is None else state.conv[0].numel())
    assert mixer.state_size(7) == kept == mixer.state_size(10_000)
    heads, k, v = state.recurrent.shape[1:]
    conv = 0 if mixer.conv is None else (mixer.conv.kernel_size - 1) * mixer.conv.channels
    assert mixer.state_size(7) == heads * k * v + conv
    assert state.recurrent.dtype == torch.float64 and mixer.mixing_flops(64) > 0


def test_state_size_formulas_at_the_defaults():
    config = ModelConfig(d_model=32, n_heads=4)
    sizes = {n: build_mixer(n, config, 0).state_size(100) for n in NAMES}
    assert sizes["linear_attention"] == 4 * 8 * (8 + 1) + 3 * 96  # z column, conv on q, k, v
    assert sizes["retnet"] == 4 * 8 * 16 + 3 * 128  # V = 2 d_model / heads
    assert sizes["gla"] == 4 * 4 * 8 + 3 * 64  # K = d_model / (2 heads)
    assert sizes["mamba2"] == 64 * 64 + 3 * (64 + 2 * 64)  # d_inner · d_state + conv on xBC
    assert sizes["deltanet"] == 4 * 8 * 8 + 3 * 96
    assert sizes["gated_deltanet"] == 4 * 8 * 16 + 3 * 128


def test_state_dtype_is_float32_for_float32_modules():
    mixer = make("gated_deltanet", torch.float32)
    _, state = mixer(torch.randn(1, 5, 16), mixer.init_state(1))
    assert state.recurrent.dtype == state.conv.dtype == torch.float32


def test_write_strength_lies_in_zero_two_with_negative_eigenvalues():
    logits = torch.linspace(-40, 40, 801, dtype=F64)
    for cls in (DeltaNet, GatedDeltaNet):
        plain = cls(16, 2).write_strength(logits)
        signed = cls(16, 2, negative_eigenvalues=True).write_strength(logits)
        assert plain.min() >= 0 and plain.max() <= 1 and plain.max() > 0.999
        assert signed.min() >= 0 and signed.max() <= 2 and signed.max() > 1.999
        assert signed.min() < 1e-9
        torch.testing.assert_close(signed, 2 * plain)


def test_gated_deltanet_decay_is_mamba2_style_and_at_most_one():
    mixer = make("gated_deltanet")
    logits = torch.randn(2, 9, 2, dtype=F64) * 5
    g = mixer.log_decay(logits)
    torch.testing.assert_close(g, -mixer.A_log.exp() * F.softplus(logits + mixer.dt_bias))
    assert (g <= 0).all()
    A = GatedDeltaNet(16, 2).A_log.exp()
    assert (A >= 1).all() and (A <= 16).all()


def test_mamba2_signed_decays_lie_in_open_interval_and_match_two_exp_minus_one():
    g = -torch.logspace(-6, 1, 400, dtype=F64)  # down to −10: 2 e^g − 1 > −1 in float64
    log_abs, sign = signed_log_decay(g)
    decay = sign * log_abs.exp()
    torch.testing.assert_close(decay, 2 * g.exp() - 1, rtol=1e-12, atol=1e-300)
    assert (decay > -1).all() and (decay < 1).all() and (decay < 0).any() and (decay > 0).any()
    assert torch.isfinite(signed_log_decay(torch.tensor([-torch.log(torch.tensor(2.0))]))[0]).all()

    mixer = make("mamba2", negative_eigenvalues=True)
    _, dt = mixer._project(torch.randn(2, 11, 16, dtype=F64))[0]
    _, g = mixer.step_and_log_decay(dt)
    decay = 2 * g.exp() - 1
    assert (decay > -1).all() and (decay < 1).all() and (decay < 0).any()


def test_signed_gla_matches_a_loop_with_signed_decays_float64():
    gen = torch.Generator().manual_seed(3)
    B, T, H, K, V = 2, 21, 3, 5, 4
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=F64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    g = -torch.rand(B, T, H, generator=gen, dtype=F64) * 2
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, h0)]
    o, final = signed_gla(
        *leaves[:3],
        *signed_log_decay(leaves[3]),
        scale=1.0,
        initial_state=leaves[4],
        output_final_state=True,
        chunk_size=8,
    )
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, g, h0)]
    rq, rk, rv, rg, state = ref_leaves
    decay = 2 * rg.exp() - 1
    outs = []
    for t in range(T):
        state = decay[:, t, :, None, None] * state + rk[:, t, ..., None] * rv[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", rq[:, t], state))
    o_ref = torch.stack(outs, 1)
    assert (decay < 0).any()
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, state, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(o.sum() + final.sum(), leaves)
    grads_ref = torch.autograd.grad(o_ref.sum() + state.sum(), ref_leaves)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-11)


def test_retnet_decays_are_fixed_per_head():
    model = build_model(ModelConfig(mixer="retnet", d_model=32, n_heads=4, vocab_size=16))
    mixer = model.blocks[0].mixer
    expected = torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8], dtype=F64)
    torch.testing.assert_close(retnet_decays(4), expected)
    torch.testing.assert_close(mixer.log_decay.exp(), expected.float())
    assert not any("decay" in n for n, _ in model.named_parameters())
    # an impulse in one head decays by γ_h per step: the state read by a constant query
    retention = make("retnet", rotary=False, conv_size=0)
    q = torch.ones(1, 6, 2, 8, dtype=F64)
    k = torch.zeros_like(q)
    k[:, 0] = 1.0
    v = torch.ones(1, 6, 2, 16, dtype=F64)
    qkv = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], -1)
    o, _ = retention._recur((qkv,), None)
    ratio = o[0, 1:, :, 0] / o[0, :-1, :, 0]
    torch.testing.assert_close(ratio, retnet_decays(2).expand(5, 2))


def test_gla_decays_at_init_span_fast_and_slow_channels():
    mixer = make("gla")
    decay = mixer.log_decay(torch.zeros(1, 1, 16, dtype=F64)).exp().flatten()
    torch.testing.assert_close(decay.min(), torch.tensor(0.1, dtype=F64))
    torch.testing.assert_close(decay.max(), torch.tensor(0.99, dtype=F64))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_identical_logits(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer=name, d_model=16, n_heads=2, vocab_size=11))
    tokens = torch.randint(0, 11, (2, 9))
    seqlab.save(model, tmp_path / name)
    loaded = seqlab.load(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], loaded(tokens)[0])


@pytest.mark.parametrize("name", NAMES)
def test_option_typo_raises_config_error_listing_valid_options(name):
    config = ModelConfig(mixer=name, d_model=16, n_heads=2, mixer_options={name: {"headz": 2}})
    with pytest.raises(ConfigError, match=r"headz.*valid options: .*chunk_size.*heads"):
        build_model(config)


@pytest.mark.parametrize(
    "options",
    [{"heads": 3}, {"chunk_size": 12}, {"chunk_size": 0}, {"negative_eigenvalues": "yes"}],
)
def test_bad_option_values_raise_config_error(options):
    config = ModelConfig(mixer="mamba2", d_model=16, n_heads=2, mixer_options={"mamba2": options})
    with pytest.raises(ConfigError):
        build_model(config)


@pytest.mark.parametrize("name", NAMES)
def test_block_diffusion_with_a_state_is_refused(name):
    mixer = make(name)
    with pytest.raises(SeqlabError, match="cannot continue from a state"):
        mixer(
            torch.randn(1, 4, 16, dtype=F64), mixer.init_state(1), layout=Layout.block_diffusion(2)
        )


@pytest.mark.parametrize("name", NAMES)
def test_block_diffusion_needs_an_even_length(name):
    mixer = make(name)
    with pytest.raises(SeqlabError, match="even length"):
        mixer(torch.randn(1, 5, 16, dtype=F64), layout=Layout.block_diffusion(2))


def test_heads_option_sets_the_head_count():
    config = ModelConfig(
        mixer="deltanet", d_model=32, n_heads=4, mixer_options={"deltanet": {"heads": 2}}
    )
    mixer = build_mixer("deltanet", config, 0)
    assert mixer.heads == 2 and mixer.init_state(1).recurrent.shape == (1, 2, 16, 16)


BLOCK_VARIANTS = [*VARIANTS, ("retnet", {"rotary": True})]


@pytest.mark.parametrize(("name", "options"), BLOCK_VARIANTS)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_block_states_from_one_kernel_call_equal_scanning_block_by_block(name, options, mode):
    """Block diffusion's start states from the kernel's chunk states (`_block_forward`) give
    the same outputs and input gradients as scanning the clean half one block at a time."""
    fast = make(name, **options)
    fast.kernel_mode = mode
    if isinstance(fast, Mamba2):
        with torch.no_grad():  # decays 2 exp(-Δ) - 1 of both signs: Δ near ln 2
            fast.A_log.zero_()
            fast.dt_bias.fill_(0.2)
    slow = make(name, **options)
    slow.load_state_dict(fast.state_dict())
    slow.kernel_mode = mode
    slow._block_forward = lambda noised, clean, size: None  # the block-by-block path
    x = torch.randn(2, 32, 16, dtype=F64, requires_grad=True)
    layout = Layout.block_diffusion(4)
    halves = [fast._project(x[:, :16])[0], fast._project(x[:, 16:])[0]]
    assert fast._block_forward(*halves, 4) is not None
    outputs, grads = [], []
    for mixer in (fast, slow):
        y, _ = mixer(x, layout=layout)
        outputs.append(y)
        grads.append(torch.autograd.grad((y * torch.cos(y)).sum(), x)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-9)


def test_block_states_fall_back_where_the_kernel_cannot_chunk_by_the_block_size():
    gla, delta = make("gla"), make("deltanet")
    x = torch.randn(1, 12, 16, dtype=F64)
    assert gla._block_forward(gla._project(x)[0], gla._project(x)[0], 6) is None  # not 2^n
    assert delta._block_forward(delta._project(x)[0], delta._project(x)[0], 6) is not None
    for mixer in (gla, delta):
        y, _ = mixer(torch.randn(1, 24, 16, dtype=F64), layout=Layout.block_diffusion(6))
        assert y.shape == (1, 24, 16)
