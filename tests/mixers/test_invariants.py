"""The DESIGN invariants, checked for every registered mixer."""

from __future__ import annotations

import pytest
import torch

import seqlab.mixers  # noqa: F401
from seqlab.config import ModelConfig
from seqlab.mixers.base import Layout, map_state
from seqlab.model import build_mixer, build_model
from seqlab.registry import MIXERS

ALL = MIXERS.names()
CAUSAL = [n for n in ALL if "causal" in MIXERS.get(n).declared("layouts")]
BIDIRECTIONAL = [n for n in ALL if "bidirectional" in MIXERS.get(n).declared("layouts")]
BLOCK_DIFFUSION = [n for n in ALL if "block_diffusion" in MIXERS.get(n).declared("layouts")]
D_MODEL = 32


def make_mixer(name: str, dtype: torch.dtype = torch.float64):
    config = ModelConfig(mixer=name, d_model=D_MODEL, n_layers=2, n_heads=4)
    mixer = build_mixer(name, config, 0)
    mixer.init_weights(0.1, 0.1)
    return mixer.to(dtype)


@pytest.mark.parametrize("name", CAUSAL)
def test_split_and_token_by_token_match_full_sequence_float64(name):
    mixer = make_mixer(name)
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x)
    state = mixer.init_state(2, dtype=torch.float64)
    head, state_a = mixer(x[:, :5], state)
    tail, _ = mixer(x[:, 5:], state_a)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-9, atol=1e-10)
    state = mixer.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(x.shape[1]):
        y, state = mixer(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CAUSAL)
def test_split_across_chunk_boundaries_matches_full_sequence_float64(name):
    """T = 150 spans three 64-step chunks; the split point falls inside the second."""
    mixer = make_mixer(name)
    x = torch.randn(1, 150, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x)
    head, state = mixer(x[:, :67], mixer.init_state(1, dtype=torch.float64))
    tail, _ = mixer(x[:, 67:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CAUSAL)
def test_output_has_zero_gradient_from_future_inputs(name):
    mixer = make_mixer(name)
    x = torch.randn(1, 11, D_MODEL, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    for t in (0, 4, 9):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1 :].abs().max() == 0, f"output {t} reads the future"
        assert grad[:, : t + 1].abs().max() > 0, f"output {t} reads nothing"


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_bidirectional_layout_reads_both_directions(name):
    mixer = make_mixer(name)
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x, layout=Layout.BIDIRECTIONAL)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert grad[:, 1:].abs().max() > 0


@pytest.mark.parametrize("name", CAUSAL)
def test_state_size_is_reported(name):
    mixer = make_mixer(name)
    assert mixer.state_size(64) > 0
    kind = MIXERS.get(name).declared("state_kind")
    if kind == "fixed":
        assert mixer.state_size(64) == mixer.state_size(4096)
    else:
        assert mixer.state_size(4096) > mixer.state_size(64)


def state_tensors(state) -> list[torch.Tensor]:
    tensors: list[torch.Tensor] = []
    map_state(lambda t: tensors.append(t) or t, state)
    return tensors


FIXED = [n for n in CAUSAL if MIXERS.get(n).declared("state_kind") == "fixed"]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_state_holds_no_view_of_the_prefill(name):
    """The memory a fixed-size state keeps alive does not grow with the prefill length."""
    mixer = make_mixer(name, torch.float32)
    held = []
    for length in (8, 200):
        x = torch.randn(1, length, D_MODEL)
        with torch.no_grad():
            _, state = mixer(x, mixer.init_state(1))
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in state_tensors(state)
        }
        held.append(sum(storages.values()))
    assert held[0] == held[1], f"state storage {held[0]} bytes after 8 tokens, {held[1]} after 200"


def periodic_batch(generator: torch.Generator, batch: int, length: int, vocab: int, period: int):
    """Sequences repeating a random motif of `period` tokens: after the first period the
    next token is the one `period` steps back, so only a mixer (not the MLP) can predict it."""
    motif = torch.randint(0, vocab, (batch, period), generator=generator)
    tokens = motif.repeat(1, length // period + 1)[:, :length]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, period:] = True
    return tokens, mask


@pytest.mark.parametrize("name", CAUSAL)
def test_two_layer_model_learns_periodic_copy(name):
    from seqlab.objectives import Batch, build_objective

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(mixer=name, d_model=D_MODEL, n_layers=2, n_heads=4, vocab_size=16)
    )
    objective = build_objective("ar")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        tokens, mask = periodic_batch(generator, 16, 24, 16, 3)
        loss, _ = objective.loss(model, Batch(tokens, mask))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert end < 0.25 * start, f"{name}: loss {start:.3f} -> {end:.3f}"


@pytest.mark.parametrize("name", BLOCK_DIFFUSION)
@pytest.mark.parametrize(("length", "block"), [(10, 4), (8, 1), (6, 6)])
def test_block_diffusion_equals_reading_each_block_from_the_cached_prefix(name, length, block):
    """[x_t ; x_0] in one pass equals what block-wise sampling computes: prefill the clean
    blocks before j block-causally into the state (or KV cache), then read x_t^j
    bidirectionally from it; the clean half equals a block-causal pass over x_0."""
    mixer = make_mixer(name)
    x_t, x_0 = torch.randn(2, 2, length, D_MODEL, dtype=torch.float64)
    positions = torch.arange(length).repeat(2)
    layout = Layout.block_causal(block)
    y, _ = mixer(
        torch.cat([x_t, x_0], 1), layout=Layout.block_diffusion(block), positions=positions
    )
    for start in range(0, length, block):
        end = min(start + block, length)
        state = mixer.init_state(2, dtype=torch.float64)
        if start:
            _, state = mixer(x_0[:, :start], state, layout=layout)
        expected, _ = mixer(x_t[:, start:end], state, layout=Layout.BIDIRECTIONAL)
        torch.testing.assert_close(y[:, start:end], expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y[:, length:], mixer(x_0, layout=layout)[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", BLOCK_DIFFUSION)
def test_noised_block_depends_only_on_its_clean_prefix_and_itself(name):
    """The attention formulation's semantics, by gradient: noised block j reads x_0^{<j} and
    x_t^j; clean block j reads x_0^{<=j}."""
    mixer = make_mixer(name)
    length, block = 9, 3
    x = torch.randn(1, 2 * length, D_MODEL, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(length).repeat(2)
    y, _ = mixer(x, layout=Layout.block_diffusion(block), positions=positions)
    for j in range(length // block):
        lo, hi = j * block, (j + 1) * block
        (grad,) = torch.autograd.grad(y[:, lo:hi].sum(), x, retain_graph=True)
        reads = grad.abs().sum(-1)[0] > 0
        expected = torch.zeros(2 * length, dtype=torch.bool)
        expected[lo:hi] = True
        expected[length : length + lo] = True
        assert torch.equal(reads, expected), f"noised block {j} reads {reads.nonzero().tolist()}"
        (grad,) = torch.autograd.grad(y[:, length + lo : length + hi].sum(), x, retain_graph=True)
        reads = grad.abs().sum(-1)[0] > 0
        expected = torch.zeros(2 * length, dtype=torch.bool)
        expected[length : length + hi] = True
        assert torch.equal(reads, expected), f"clean block {j} reads {reads.nonzero().tolist()}"


@pytest.mark.parametrize("name", BLOCK_DIFFUSION)
def test_block_causal_continues_from_a_state_at_block_boundaries(name):
    mixer = make_mixer(name)
    layout = Layout.block_causal(4)
    x = torch.randn(2, 14, D_MODEL, dtype=torch.float64)
    full, _ = mixer(x, layout=layout)
    state = mixer.init_state(2, dtype=torch.float64)
    parts = []
    for lo, hi in [(0, 4), (4, 12), (12, 14)]:
        y, state = mixer(x[:, lo:hi], state, layout=layout)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-10)
