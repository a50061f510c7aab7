"""TrellisNet: the parallel levels against the step-by-step reference, decoding, causality,
the state, the FLOPs count, and the kit on non-default options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.trellis import Trellis, TrellisState, trellis_levels, trellis_reference
from seqlab.model import build_mixer, build_model
from seqlab.testing import check_mixer

F64 = torch.float64


def make(**options) -> Trellis:
    config = ModelConfig(mixer="trellis", d_model=6, n_heads=2, mixer_options={"trellis": options})
    mixer = build_mixer("trellis", config, 0)
    mixer.init_weights(0.4, 0.4)  # wide enough that the gates leave their linear range
    return mixer.to(F64)


def random_state(mixer: Trellis, batch: int) -> TrellisState:
    state = mixer.init_state(batch, dtype=F64)
    return TrellisState(*(torch.randn_like(t) for t in (state.x, state.h, state.c)))


@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("steps", [1, 13, 37])
@pytest.mark.parametrize(("depth", "kernel_size"), [(1, 2), (4, 2), (3, 3)])
def test_parallel_levels_equal_the_step_by_step_reference_float64(
    depth, kernel_size, steps, carried
):
    torch.manual_seed(steps + 10 * depth + kernel_size)
    mixer = make(depth=depth, kernel_size=kernel_size, expand=2)
    x = torch.randn(2, steps, 6, dtype=F64, requires_grad=True)
    state = random_state(mixer, 2) if carried else mixer.init_state(2, dtype=F64)
    for t in (state.x, state.h, state.c):
        t.requires_grad_()
    weights = [mixer.inject.weight, mixer.inject.bias]
    recur = None if mixer.recur is None else mixer.recur.weight
    if recur is not None:
        weights.append(recur)
    args = (x, mixer.inject.weight, mixer.inject.bias, recur, depth, state)
    h, new = trellis_levels(*args)
    h_ref, new_ref = trellis_reference(*args)
    outputs, outputs_ref = (h, new.x, new.h, new.c), (h_ref, new_ref.x, new_ref.h, new_ref.c)
    for got, want in zip(outputs, outputs_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    probes = [torch.randn_like(t) for t in outputs]
    leaves = [x, state.x, state.h, state.c, *weights] if carried else [x, *weights]
    grads = torch.autograd.grad(
        sum((t * p).sum() for t, p in zip(outputs, probes, strict=True)),
        leaves,
        allow_unused=True,
    )
    grads_ref = torch.autograd.grad(
        sum((t * p).sum() for t, p in zip(outputs_ref, probes, strict=True)),
        leaves,
        allow_unused=True,
    )
    for got, want in zip(grads, grads_ref, strict=True):
        if want is None:  # an empty state tensor (depth 1)
            assert got is None or got.numel() == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_state_carries_every_level_not_only_the_input():
    """A carried state changes the first outputs through each level's h and c (not just the
    input window): the parallel form reads all three."""
    torch.manual_seed(0)
    mixer = make(depth=3)
    x = torch.randn(1, 4, 6, dtype=F64)
    state = random_state(mixer, 1)
    base, _ = mixer(x, state)
    for field in ("x", "h", "c"):
        moved = TrellisState(state.x, state.h, state.c)
        setattr(moved, field, getattr(state, field) + 1.0)
        assert (mixer(x, moved)[0][:, 0] - base[:, 0]).abs().max() > 1e-3, field


@pytest.mark.parametrize(("depth", "kernel_size"), [(1, 2), (5, 2), (3, 4)])
def test_full_forward_equals_token_by_token_decode_and_a_prefill(depth, kernel_size):
    torch.manual_seed(depth)
    mixer = make(depth=depth, kernel_size=kernel_size)
    x = torch.randn(3, 37, 6, dtype=F64)
    full, _ = mixer(x)
    state = mixer.init_state(3, dtype=F64)
    steps = []
    for t in range(37):
        y, state = mixer(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-12)
    head, state = mixer(x[:, :13], mixer.init_state(3, dtype=F64))
    tail, end = mixer(x[:, 13:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-10, atol=1e-12)
    assert sum(t.numel() for t in (end.x, end.h, end.c)) == 3 * mixer.state_size(37)


def test_earlier_outputs_do_not_move_when_a_future_input_changes():
    torch.manual_seed(1)
    mixer = make(depth=4, kernel_size=3)
    x = torch.randn(2, 13, 6, dtype=F64)
    y, _ = mixer(x)
    moved = x.clone()
    moved[:, 7] += 3.0
    y_moved, _ = mixer(moved)
    assert torch.equal(y_moved[:, :7], y[:, :7])
    assert (y_moved[:, 7] - y[:, 7]).abs().max() > 1e-3


def test_state_size_counts_the_input_window_and_levels_below_the_top():
    mixer = Trellis(8, depth=5, expand=2, kernel_size=3)
    # x: 2 · 8; levels 1-4: h 2 · 16 and c 16 each
    assert mixer.state_size(1) == mixer.state_size(1000) == 2 * 8 + 4 * 3 * 16
    assert Trellis(8, depth=1).state_size(9) == 8


def test_weights_are_tied_across_depth():
    shallow, deep = Trellis(8, depth=2), Trellis(8, depth=12)
    count = [sum(p.numel() for p in m.parameters()) for m in (shallow, deep)]
    assert count[0] == count[1]
    assert Trellis(8, depth=1).recur is None  # level 1 reads zeros: no hidden conv


def test_flops_count_the_tied_conv_once_per_level_that_applies_it():
    """flops_per_token counts each nn.Linear once; with mixing_flops the tied hidden conv is
    counted depth − 1 times (levels 2 … depth; level 1 reads zeros), the injected conv once,
    plus ~6 per gate unit and level."""
    d, expand, k = 8, 2, 3
    hidden = expand * d
    for depth in (1, 2, 7):
        options = {"trellis": {"depth": depth, "expand": expand, "kernel_size": k}}
        config = ModelConfig(
            mixer="trellis", d_model=d, n_layers=1, vocab_size=11, mixer_options=options
        )
        model = build_model(config)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        recur = 4 * hidden * k * hidden if depth > 1 else 0
        applied = linear - recur + (depth - 1) * recur
        expected = 2 * applied + 6 * 4 * hidden * depth
        assert model.flops_per_token(16) == pytest.approx(expected)


@pytest.mark.parametrize(
    "options",
    [{"kernel_size": 1}, {"depth": 0}, {"expand": 0}, {"kernel_size": 2.5}],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        make(**options)


def test_kit_exactness_checks_pass_with_a_wider_kernel_and_shallow_stack():
    report = check_mixer(
        "trellis",
        depth=2,
        kernel_size=3,
        expand=2,
        only=["split_decode", "chunk_split", "causality", "state_size", "bidirectional"],
    )
    assert report.ok, str(report)
