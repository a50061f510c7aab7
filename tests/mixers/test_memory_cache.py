"""Memory caching: the parallel form against the step-by-step reference (float64, forward and
backward), decode and ragged rows, the conformance kit, and the option checks."""

from __future__ import annotations

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.memory_cache import MODES, MemoryCache, memory_cache_reference
from seqlab.model import build_model
from seqlab.registry import MIXERS
from seqlab.sampling.state import feed_rows
from seqlab.testing import check_mixer
from seqlab.testing.mixers import state_numbers

COVERED = ["linear_attention", "retnet", "gla", "deltanet", "gated_deltanet"]


def cache_options(mode: str, segment: int = 4) -> dict:
    return {"segment": segment, "mode": mode, **({"top_k": 2} if mode == "sparse" else {})}


def build(name: str, memory_cache: dict | None, **options) -> torch.nn.Module:
    config = ModelConfig(mixer=name, d_model=32, n_layers=2, n_heads=4)
    if memory_cache is not None:
        options["memory_cache"] = memory_cache
    mixer = MIXERS.get(name).target.from_config(config, 0, **options)
    mixer.init_weights(0.2, 0.2)
    return mixer.double()


def grads(mixer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    weights = torch.randn_like(y)
    return torch.autograd.grad((y * weights).sum(), [x, *mixer.parameters()], allow_unused=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", COVERED)
def test_parallel_matches_reference_forward_and_backward_float64(name, mode):
    """T = 13 with segments of 4: three cached memories, a partial last segment."""
    torch.manual_seed(0)
    mixer = build(name, cache_options(mode))
    x = torch.randn(2, 13, 32, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    expected = memory_cache_reference(mixer, x)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)
    torch.manual_seed(1)
    fast = grads(mixer, x, y)
    torch.manual_seed(1)
    slow = grads(mixer, x, expected)
    for a, b in zip(fast, slow, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_segment_that_is_not_a_power_of_two_on_a_power_of_two_kernel(name):
    """Segment 6 on the gated linear attention kernel (chunks of 2, every third state)."""
    torch.manual_seed(0)
    mixer = build(name, cache_options("gated", segment=6))
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    y, _ = mixer(x)
    torch.testing.assert_close(y, memory_cache_reference(mixer, x), rtol=1e-9, atol=1e-10)
    head, state = mixer(x[:, :4], mixer.init_state(2, dtype=torch.float64))
    tail, _ = mixer(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), y, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_cached_reads_change_the_output_only_after_the_first_segment(mode):
    torch.manual_seed(0)
    plain = build("gated_deltanet", None)
    cached = build("gated_deltanet", cache_options(mode, segment=5))
    cached.inner.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    y, _ = cached(x)
    z, _ = plain(x)
    torch.testing.assert_close(y[:, :5], z[:, :5], rtol=1e-9, atol=1e-10)
    assert (y[:, 5:] - z[:, 5:]).abs().amax() > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_shorter_than_a_segment_is_the_inner_mixer_exactly(mode):
    """T < segment: no memory yet, in the parallel form, a prefill and token-by-token."""
    torch.manual_seed(0)
    plain = build("gated_deltanet", None)
    cached = build("gated_deltanet", cache_options(mode, segment=16))
    cached.inner.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    expected, _ = plain(x)
    assert torch.equal(cached(x)[0], expected)
    prefill, state = cached(x, cached.init_state(2, dtype=torch.float64))
    assert torch.equal(prefill, plain(x, plain.init_state(2, dtype=torch.float64))[0])
    assert state.cache.memories.shape[1] == 0


@pytest.mark.parametrize("mode", MODES)
def test_splits_across_segment_boundaries_match_the_full_pass(mode):
    """Prefills that start mid-segment, end on a boundary, or span several segments."""
    torch.manual_seed(0)
    mixer = build("gated_deltanet", cache_options(mode, segment=3))
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    full, _ = mixer(x)
    for cuts in ([1, 2, 6, 13], [3, 9], [5, 16]):
        state, parts, start = mixer.init_state(2, dtype=torch.float64), [], 0
        for end in [*cuts, 17]:
            y, state = mixer(x[:, start:end], state)
            parts.append(y)
            start = end
        torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-10)
    assert state.cache.memories.shape[1] == 17 // 3
    assert mixer.state_size(17) == state_numbers(state, 2)


def test_rows_fed_different_lengths_keep_their_own_memories():
    """Ragged feeding (per-row lengths, then a common continuation) equals each row alone:
    the caches of rows with different numbers of memories are padded and stacked."""
    torch.manual_seed(0)
    config = ModelConfig(
        mixer="gated_deltanet",
        d_model=32,
        n_layers=1,
        n_heads=4,
        vocab_size=17,
        mixer_options={"gated_deltanet": {"memory_cache": cache_options("gated", segment=3)}},
    )
    model = build_model(config).double()
    tokens = torch.randint(0, 17, (3, 11))
    lengths = torch.tensor([4, 7, 2])
    _, state = feed_rows(model, model.init_state(3, dtype=torch.float64), tokens, lengths)
    after, _ = model(tokens[:, -4:], state)
    for row in range(3):
        n = int(lengths[row])
        alone = torch.cat([tokens[row, :n], tokens[row, -4:]])[None]
        expected, _ = model(alone)
        torch.testing.assert_close(after[row], expected[0, -4:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_conformance_kit_exactness_invariants(mode):
    report = check_mixer(
        "gated_deltanet",
        only=["split_decode", "chunk_split", "causality", "state_size", "save_load"],
        memory_cache=cache_options(mode),
    )
    assert report["split_decode"].status == "pass"
    assert report["bidirectional"].status == "skip"


def test_conformance_kit_full_on_gated_deltanet_with_gated_memory():
    report = check_mixer("gated_deltanet", memory_cache=cache_options("gated", segment=8))
    assert report["learns"].status == "pass"
    assert report["fixed_state_storage"].status == "skip"


def test_the_wrapper_declares_causal_only_and_a_growing_state():
    mixer = build("gla", cache_options("residual"))
    assert isinstance(mixer, MemoryCache)
    assert mixer.state_kind == "kv_cache"
    assert mixer.state_size(40) - mixer.state_size(39) == 4 * 4 * 8  # H·K·V at a boundary
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    with pytest.raises(SeqlabError, match="causal layout only"):
        mixer(x, layout=Layout.BIDIRECTIONAL)


def test_memory_cache_is_listed_for_the_covered_mixers_only():
    takers = {n for n in MIXERS.names() if "memory_cache" in MIXERS.get(n).options()}
    assert set(COVERED) <= takers
    assert not {"attention", "mamba", "mamba2", "lightnet", "gateloop"} & takers


@pytest.mark.parametrize(
    "options, message",
    [
        ({"segment": 0}, "segment must be an integer >= 1"),
        ({"segment": 2.5}, "segment"),
        ({"mode": "mean"}, "mode must be one of"),
        ({"mode": "sparse"}, "needs top_k >= 1"),
        ({"mode": "sparse", "top_k": 0}, "needs top_k >= 1"),
        ({"mode": "gated", "top_k": 2}, "top_k is an option of mode sparse"),
        ({"segments": 4}, "unknown option"),
        (8, "must be a mapping"),
    ],
)
def test_bad_memory_cache_options_raise_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        build("gated_deltanet", options)


@pytest.mark.parametrize("name", ["attention", "mamba2", "lightnet"])
def test_mixers_without_a_plain_read_refuse_memory_cache_naming_the_takers(name):
    config = ModelConfig(
        mixer=name, d_model=32, n_layers=1, n_heads=4, mixer_options={name: {"memory_cache": {}}}
    )
    with pytest.raises(ConfigError, match="take it: .*gated_deltanet"):
        build_model(config)
