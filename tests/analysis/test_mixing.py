"""Implicit attention maps: `Mixer.mixing` for every registered mixer that declares
`linear_in_values`, and `seqlab.analysis.mixing_matrix` on a hybrid model.

Each map is checked in float64 at an odd length against the mixer's own forward: the matrix
(from the step-by-step reference) times the values equals the kernel output, which equals
what the forward computes before its output stage (captured by wrapping the method that
produces it), so the map is of the real forward and not of a copy of it. A causal mixer's
map is lower triangular; a bidirectional-only mixer's (hydra) is the full matrix of its
bidirectional forward.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from seqlab.analysis import mixing_matrix, mixing_mixers
from seqlab.config import ModelConfig
from seqlab.errors import SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.attention import Attention
from seqlab.mixers.base import CONFIG_FIELDS, Mixer
from seqlab.mixers.conv_ssm import ConvSSM
from seqlab.mixers.gateloop import GateLoop
from seqlab.mixers.hydra import Hydra
from seqlab.mixers.hyena import Hyena
from seqlab.mixers.linear_recurrence import LinearRecurrence
from seqlab.mixers.mingru import MinGRU
from seqlab.mixers.selective_block import SelectiveBlock
from seqlab.model import build_mixer, build_model
from seqlab.registry import MIXERS

F64 = torch.float64
STEPS = 7
# Mixers known to be linear in their values given the gates: a declaration dropped by mistake
# fails here instead of silently leaving the mixer out of the loop below.
KNOWN = {
    "attention", "deltanet", "gated_deltanet", "gateloop", "gla", "gss", "hydra", "hyena",
    "lightnet", "linear_attention", "longhorn", "mamba", "mamba2", "mingru", "retnet", "s4",
    "s4d",
}  # fmt: skip
# Options beyond the defaults: sliding window and grouped-query heads, signed decays, the
# unnormalised form; chunk_size 4 makes the fast kernels cross chunk boundaries at T = 7.
VARIANTS = {
    "attention": [{"n_kv_heads": 1, "window": 3}],
    "mamba2": [{"negative_eigenvalues": True}],
    "mamba": [{"negative_eigenvalues": True}],
    "gated_deltanet": [{"negative_eigenvalues": True}],
    "linear_attention": [{"normalize": False}],
}
LINEAR = sorted(mixing_mixers())
CASES = [(name, {}) for name in LINEAR] + [
    (name, options) for name, variants in VARIANTS.items() for options in variants
]


def make(name: str, **options) -> Mixer:
    entry = MIXERS.get(name)
    if "chunk_size" in entry.parameters():
        options.setdefault("chunk_size", 4)
    fields = {k: options.pop(k) for k in list(options) if k in CONFIG_FIELDS}
    config = ModelConfig(mixer=name, d_model=16, n_heads=4, mixer_options={name: options}, **fields)
    mixer = build_mixer(name, config, 0)
    mixer.init_weights(0.3, 0.3)
    return mixer.to(F64)


def causal(mixer: Mixer) -> bool:
    return LayoutKind.CAUSAL in mixer.layouts


def forward_kernel_output(mixer: Mixer, x: Tensor) -> Tensor:
    """What the forward computes before its output stage `[B, T, H, V]`, by wrapping (on this
    instance) the method of the forward that returns it; in the causal layout, or the
    bidirectional one for a mixer without the causal layout."""
    captured: list[Tensor] = []
    method, finish = {
        LinearRecurrence: ("_recur", lambda o: mixer._mixed(o)),
        Attention: ("_attend", lambda o: o),
        GateLoop: ("_recur", lambda o: o),
        SelectiveBlock: ("_conv_and_scan", lambda y: y[..., None]),
        MinGRU: ("_recur", lambda h: h[..., None]),
        ConvSSM: ("_causal", lambda y: (y + mixer.D * mixer._ssm_input(x)[0])[..., None]),
        Hyena: ("_recurrence", lambda z: z[..., None]),
        Hydra: ("_mix", lambda y: y),
    }[next(c for c in (LinearRecurrence, Attention, GateLoop, SelectiveBlock, MinGRU, ConvSSM,
                       Hyena, Hydra) if isinstance(mixer, c))]  # fmt: skip
    original: Callable = getattr(mixer, method)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        captured.append(result[0] if isinstance(result, tuple) else result)
        return result

    setattr(mixer, method, wrapped)
    try:
        mixer(x, layout=Layout.CAUSAL if causal(mixer) else Layout.BIDIRECTIONAL)
    finally:
        delattr(mixer, method)
    (o,) = captured
    return finish(o)


def test_every_known_linear_mixer_declares_a_matrix():
    assert set(LINEAR) >= KNOWN, sorted(KNOWN - set(LINEAR))


@pytest.mark.parametrize(
    "name, options", CASES, ids=[f"{n}-{'-'.join(o) or 'default'}" for n, o in CASES]
)
def test_matrix_times_values_is_the_forward_kernel_output(name, options):
    mixer = make(name, **options)
    x = torch.randn(2, STEPS, 16, dtype=F64)
    with torch.no_grad():
        mixing = mixer.mixing(x)
        expected = forward_kernel_output(mixer, x)
    b, h, t, s = mixing.matrix.shape
    assert (b, t, s) == (2, STEPS, STEPS) and mixing.matrix.dtype == F64
    assert mixing.values.shape[:3] == (2, STEPS, h) and mixing.output.shape == mixing.values.shape
    applied = torch.einsum("bhts,bshv->bthv", mixing.matrix, mixing.values)
    torch.testing.assert_close(applied, mixing.output, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mixing.head_output(), expected.to(F64), rtol=1e-9, atol=1e-10)
    if causal(mixer):
        assert mixing.matrix.triu(1).abs().max() == 0, "a causal matrix is lower triangular"
    else:
        assert mixing.matrix.triu(1).abs().max() > 0, "a bidirectional matrix reads ahead"
    assert mixing.matrix.tril().abs().max() > 0


@pytest.mark.parametrize("options", [{}, {"n_kv_heads": 1, "window": 3}])
def test_attention_rows_are_probabilities_within_the_window(options):
    mixer = make("attention", **options)
    matrix = mixer.mixing(torch.randn(1, STEPS, 16, dtype=F64)).matrix
    torch.testing.assert_close(matrix.sum(-1), torch.ones(1, 4, STEPS, dtype=F64))
    assert (matrix >= 0).all()
    if "window" in options:
        lag = torch.arange(STEPS)[:, None] - torch.arange(STEPS)[None, :]
        assert matrix[..., lag >= 3].abs().max() == 0
        assert (matrix[..., (lag >= 0) & (lag < 3)] > 0).all()


@pytest.mark.parametrize("name", sorted(set(MIXERS.names()) - set(LINEAR)))
def test_mixers_without_a_matrix_say_so(name):
    mixer = make(name)
    with pytest.raises(SeqlabError, match="no mixing matrix"):
        mixer.mixing(torch.randn(1, STEPS, 16, dtype=F64))


def hybrid() -> torch.nn.Module:
    config = ModelConfig(vocab_size=32, d_model=16, n_heads=2, layers=["gla", "attention", "lstm"])
    return build_model(config).to(F64)


def test_mixing_matrix_reads_the_layer_input_of_the_model():
    model = hybrid()
    tokens = torch.randint(0, 32, (2, STEPS))
    mixing = mixing_matrix(model, tokens, 1)
    with torch.no_grad():
        x, _ = model.blocks[0](model.embed(tokens), None, Layout.CAUSAL, None)
        expected = model.blocks[1].mixer.mixing(model.blocks[1].mixer_norm(x))
    torch.testing.assert_close(mixing.matrix, expected.matrix, rtol=0, atol=0)
    torch.testing.assert_close(mixing.output, expected.output, rtol=0, atol=0)
    assert mixing_matrix(model, tokens.tolist(), 0).matrix.shape == (2, 2, STEPS, STEPS)
    assert not any(p.grad is not None for p in model.parameters())
    assert not model.blocks[1].mixer._forward_pre_hooks


@pytest.mark.parametrize("layer", [3, -1, True, "1"])
def test_mixing_matrix_refuses_a_layer_outside_the_model(layer):
    with pytest.raises(SeqlabError, match=r"layer must be an integer in 0 … 2"):
        mixing_matrix(hybrid(), torch.zeros(1, 3, dtype=torch.long), layer)


def test_mixing_matrix_of_a_layer_without_one_names_the_mixers_that_have_one():
    with pytest.raises(SeqlabError, match=r"'lstm' has no mixing matrix.*attention, deltanet"):
        mixing_matrix(hybrid(), torch.zeros(1, 3, dtype=torch.long), 2)


def test_mixing_matrix_of_a_bidirectional_only_model_runs_it_bidirectionally():
    model = build_model(ModelConfig(vocab_size=32, d_model=16, n_heads=2, mixer="hydra")).to(F64)
    tokens = torch.randint(0, 32, (2, STEPS))
    mixing = mixing_matrix(model, tokens, 1)
    with torch.no_grad():
        x, _ = model.blocks[0](model.embed(tokens), None, Layout.BIDIRECTIONAL, None)
        expected = model.blocks[1].mixer.mixing(model.blocks[1].mixer_norm(x))
    torch.testing.assert_close(mixing.matrix, expected.matrix, rtol=0, atol=0)
    assert mixing.matrix.triu(1).abs().max() > 0
