"""LightNet: the chunked form against the step-by-step reference, the kit, and its options."""

from __future__ import annotations

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.lightnet import (
    LightNet,
    lightnet_attention,
    lightnet_gate,
    lightnet_reference,
)
from seqlab.model import build_mixer

F64 = torch.float64


def make(dtype: torch.dtype = F64, **options) -> LightNet:
    config = ModelConfig(
        mixer="lightnet", d_model=12, n_heads=3, mixer_options={"lightnet": options}
    )
    mixer = build_mixer("lightnet", config, 0)
    mixer.init_weights(0.3, 0.3)
    return mixer.to(dtype)


def inputs(batch: int, steps: int, heads: int, dim_k: int, dim_v: int, carried: bool):
    """Odd-shaped q, k (logits of spread ~2), v, and optionally a carried S_0 and z_0."""
    q = torch.randn(batch, steps, heads, dim_k, dtype=F64)
    k = 2 * torch.randn(batch, steps, heads, dim_k, dtype=F64)
    v = torch.randn(batch, steps, heads, dim_v, dtype=F64)
    leaves = [q, k, v]
    if carried:
        leaves.append(torch.randn(batch, heads, dim_k, dim_v, dtype=F64))
        leaves.append(torch.randn(batch, heads, dim_k, dtype=F64) + 1.5)
    return [t.requires_grad_() for t in leaves]


@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize(("steps", "chunk"), [(1, 4), (13, 4), (37, 8), (5, 16)])
def test_chunked_form_equals_the_step_by_step_reference_float64(steps, chunk, carried):
    torch.manual_seed(steps + chunk + carried)
    leaves = inputs(2, steps, 3, 5, 7, carried)
    q, k, v = leaves[:3]
    state = {} if not carried else {"initial_state": leaves[3], "initial_normalizer": leaves[4]}
    o, s, z = lightnet_attention(
        q, k, v, output_final_state=True, chunk_size=chunk, mode="chunk", **state
    )
    o_ref, s_ref, z_ref = lightnet_reference(q, k, v, **state)
    for got, want in ((o, o_ref), (s, s_ref), (z, z_ref)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    weights = [torch.randn_like(t) for t in (o, s, z)]
    loss = sum((t * w).sum() for t, w in zip((o, s, z), weights, strict=True))
    loss_ref = sum((t * w).sum() for t, w in zip((o_ref, s_ref, z_ref), weights, strict=True))
    grads = torch.autograd.grad(loss, leaves)
    grads_ref = torch.autograd.grad(loss_ref, leaves)
    names = ["q", "k", "v", "S0", "z0"]
    for name, grad, grad_ref in zip(names[: len(leaves)], grads, grads_ref, strict=True):
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-11, msg=name)


def test_chunk_states_and_normalisers_entering_each_chunk():
    torch.manual_seed(1)
    q, k, v = inputs(2, 12, 2, 3, 4, False)
    *_, starts, z_starts = lightnet_attention(q, k, v, chunk_size=4, output_chunk_states=True)
    for j, start in enumerate(range(0, 12, 4)):
        _, s_ref, z_ref = lightnet_reference(q[:, :start], k[:, :start], v[:, :start])
        torch.testing.assert_close(starts[:, j], s_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(z_starts[:, j], z_ref, rtol=1e-10, atol=1e-12)


def test_the_keys_are_a_softmax_over_the_prefix():
    k = torch.randn(2, 9, 3, 4, dtype=F64)
    key, g, entering = lightnet_gate(k)
    z = k.logcumsumexp(dim=1)
    torch.testing.assert_close(entering[:, 1:], z)
    torch.testing.assert_close(g[:, 0], torch.zeros_like(g[:, 0]))  # the first step: no decay
    # the weight of token s in S_t is exp(k_s − z_t) = softmax over s ≤ t
    weights = key * (g.cumsum(1)[:, -1:] - g.cumsum(1)).exp()
    torch.testing.assert_close(weights, k.softmax(dim=1))
    assert (g <= 0).all()


def test_first_decode_step_is_exact_and_keeps_the_value():
    mixer = make(conv_size=0)
    x = torch.randn(2, 1, 12, dtype=F64)
    state = mixer.init_state(2)
    assert torch.isneginf(state.normalizer).all() and state.normalizer.shape == (2, 3, 4)
    y, new = mixer(x, state)
    torch.testing.assert_close(y, mixer(x)[0], rtol=1e-12, atol=1e-14)  # recurrent vs chunk
    v = mixer.qkv(x)[..., 24:].view(2, 3, 1, 4)  # S_1 = v_1ᵀ under every key
    torch.testing.assert_close(new.recurrent, v.expand(2, 3, 4, 4))
    assert torch.isfinite(new.normalizer).all()


def test_state_size_counts_s_z_and_the_conv():
    mixer = make()
    state = mixer.init_state(3)
    held = state.recurrent[0].numel() + state.normalizer[0].numel() + state.conv[0].numel()
    assert mixer.state_size(5) == held == 3 * 4 * 4 + 3 * 4 + 3 * 36
    assert mixer.mixing_flops(64) > 0


@pytest.mark.parametrize(
    "options",
    [
        {"gate_rank": 0},
        {"conv_size": -1},
        {"chunk_size": 12},
        {"heads": 5},
        {"expand_k": 0.3},
    ],
)
def test_bad_options_raise_config_error(options):
    config = ModelConfig(
        mixer="lightnet", d_model=12, n_heads=3, mixer_options={"lightnet": options}
    )
    with pytest.raises(ConfigError):
        build_mixer("lightnet", config, 0)
