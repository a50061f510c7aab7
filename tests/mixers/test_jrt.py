"""JRT-RNN prefix linear attention: the kernel against its dense reference, the prefix's
non-causal read, the decoding rule, the kit past the prefix, and the options."""

from __future__ import annotations

import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.jrt import JRT, taylor_features
from seqlab.model import build_mixer
from seqlab.ops.prefix_linear_attention import (
    prefix_linear_attention,
    prefix_linear_attention_reference,
)
from seqlab.testing import check_mixer

F64 = torch.float64
KIT = [
    "split_decode",
    "chunk_split",
    "causality",
    "state_size",
    "fixed_state_storage",
    "save_load",
]


def make(dtype: torch.dtype = F64, **options) -> JRT:
    options.setdefault("feature_dim", 4)
    config = ModelConfig(mixer="jrt", d_model=12, n_heads=3, mixer_options={"jrt": options})
    mixer = build_mixer("jrt", config, 0)
    mixer.init_weights(0.3, 0.3)
    return mixer.to(dtype)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize(
    ("steps", "prefix", "chunk"), [(1, 1, 4), (13, 5, 4), (37, 0, 8), (6, 6, 16)]
)
def test_kernel_equals_the_dense_reference_forward_and_backward_float64(
    steps, prefix, chunk, carried, mode
):
    torch.manual_seed(steps + prefix + chunk)
    B, H, K, V = 2, 3, 5, 4
    q, k = (torch.randn(B, steps, H, K, dtype=F64) for _ in range(2))
    v = torch.randn(B, steps, H, V, dtype=F64)
    k_enc = torch.randn(B, prefix, H, K, dtype=F64)
    v_enc = torch.randn(B, prefix, H, V, dtype=F64)
    leaves = [q, k, v, k_enc, v_enc]
    if carried:
        leaves.append(torch.randn(B, H, K, V, dtype=F64))
    for t in leaves:
        t.requires_grad_()
    state = leaves[5] if carried else None
    o, final = prefix_linear_attention(
        *leaves[:5], initial_state=state, output_final_state=True, mode=mode, chunk_size=chunk
    )
    o_ref = prefix_linear_attention_reference(*leaves[:5], initial_state=state)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
    final_ref = torch.einsum("bthk,bthv->bhkv", k, v) + torch.einsum(
        "bmhk,bmhv->bhkv", k_enc, v_enc
    )
    if carried:
        final_ref = final_ref + state
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-12)
    weight = torch.randn_like(o)
    # An empty encoder is unused by the recurrent loop: its gradient is None, i.e. zeros.
    grads = torch.autograd.grad(
        (o * weight).sum() + final.sum(), leaves, allow_unused=True, materialize_grads=True
    )
    grads_ref = torch.autograd.grad((o_ref * weight).sum() + final_ref.sum(), leaves)
    names = ["q", "k", "v", "k_enc", "v_enc", "S0"]
    for name, got, want in zip(names, grads, grads_ref, strict=False):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=name)


def test_kernel_refuses_an_encoder_longer_than_the_sequence():
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(ValueError, match="M <= T"):
        prefix_linear_attention(q, q, q, torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2, 4))


def test_taylor_features_give_the_second_order_expansion_of_exp():
    q, k = torch.randn(2, 7, 6, dtype=F64)
    d = 6
    dot = (q * k).sum(-1)
    expected = 1 + dot / math.sqrt(d) + dot**2 / (2 * d)
    got = (taylor_features(q) * taylor_features(k)).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert taylor_features(q).shape == (7, 1 + d + d * d)


def reads(mixer: JRT, steps: int, t: int) -> list[int]:
    """The inputs output t has a nonzero gradient from."""
    x = torch.randn(1, steps, 12, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(mixer(x)[0][:, t].sum(), x)
    return (grad.abs().sum(-1)[0] > 0).nonzero().flatten().tolist()


def test_prefix_is_read_non_causally_and_the_rest_causally():
    mixer = make(prefix=5)
    assert reads(mixer, 9, 0) == [0, 1, 2, 3, 4]
    assert reads(mixer, 9, 4) == [0, 1, 2, 3, 4]
    assert reads(mixer, 9, 6) == [0, 1, 2, 3, 4, 5, 6]
    assert reads(mixer, 3, 0) == [0, 1, 2], "a sequence shorter than the prefix is all prefix"
    assert reads(make(prefix=0), 9, 3) == [0, 1, 2, 3]


def test_the_encoder_projection_is_used_for_the_prefix_only():
    """Changing the encoder weights changes every output (all read the prefix) when there is
    a prefix, and none without one."""
    x = torch.randn(2, 8, 12, dtype=F64)
    for prefix, changes in ((3, True), (0, False)):
        mixer = make(prefix=prefix)
        before = mixer(x)[0]
        with torch.no_grad():
            mixer.encoder.weight.add_(0.5)
        changed = (mixer(x)[0] - before).abs().amax(-1) > 1e-9
        assert bool(changed.all()) is changes and bool(changed.any()) is changes


def test_decode_after_the_prefix_equals_the_full_forward():
    mixer = make(prefix=6)
    x = torch.randn(2, 15, 12, dtype=F64)
    full, _ = mixer(x)
    y, state = mixer(x[:, :6], mixer.init_state(2, dtype=F64))
    outputs = [y]
    for t in range(6, 15):
        y, state = mixer(x[:, t : t + 1], state)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, 1), full, rtol=1e-9, atol=1e-10)
    assert state.offset.tolist() == [15, 15]


def test_a_call_that_starts_or_ends_inside_the_prefix_is_refused():
    mixer = make(prefix=6)
    x = torch.randn(2, 15, 12, dtype=F64)
    with pytest.raises(SeqlabError, match="prefix=6 tokens non-causally.*got 4 token"):
        mixer(x[:, :4], mixer.init_state(2, dtype=F64))
    _, state = mixer(x[:, :7], mixer.init_state(2, dtype=F64))
    state.offset[0] = 0  # rows at different places: one inside the prefix
    with pytest.raises(SeqlabError, match="after 0-7 read"):
        mixer(x[:, 7:8], state)
    state.offset = None
    with pytest.raises(SeqlabError, match="init_state"):
        mixer(x[:, 7:8], state)
    with pytest.raises(SeqlabError, match="causal layout only"):
        mixer(x, layout=Layout.BIDIRECTIONAL)


@pytest.mark.parametrize("feature_map", ["taylor", "elu"])
def test_state_size_counts_the_feature_state_normaliser_and_conv(feature_map):
    mixer = make(prefix=2, feature_map=feature_map, feature_dim=4, conv_size=3)
    phi = 1 + 4 + 16 if feature_map == "taylor" else 4
    conv = 2 * (2 * 3 * 4 + 12)
    assert mixer.state_size(100) == 3 * phi * (12 // 3 + 1) + conv
    _, state = mixer(torch.randn(1, 5, 12, dtype=F64), mixer.init_state(1, dtype=F64))
    floats = state.recurrent.numel() + state.conv.numel()
    assert floats == mixer.state_size(5) and not state.offset.is_floating_point()


@pytest.mark.parametrize(
    "options",
    [{"prefix": 0, "feature_map": "elu"}, {"prefix": 3, "conv_size": 0}, {"prefix": 1}],
)
def test_the_kit_passes_past_the_prefix_for_other_options(options):
    report = check_mixer("jrt", only=KIT, feature_dim=4, **options)
    assert all(report[name].status == "pass" for name in KIT)


def test_the_kit_catches_a_prefix_the_mixer_does_not_declare():
    """With the declaration hidden, the kit's causality check sees the prefix's reads."""

    class Hidden(JRT):
        def __init__(self, d_model: int, heads: int, *, prefix: int = 4) -> None:
            super().__init__(d_model, heads, prefix=prefix, feature_dim=2)
            self.noncausal_prefix = 0

    report = check_mixer(Hidden, only=["causality"], raise_on_failure=False)
    assert report["causality"].status == "fail"
    assert "reads the future" in report["causality"].detail


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"prefix": -1}, "prefix must be an integer >= 0"),
        ({"feature_map": "softmax"}, "feature_map must be one of taylor, elu"),
        ({"feature_dim": 0}, "feature_dim must be a positive integer"),
        ({"conv_size": -1}, "conv_size must be an integer >= 0"),
        ({"chunk_size": 12}, "power of two"),
    ],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make(**options)
