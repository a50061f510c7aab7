"""The DESIGN invariants, checked for every registered mixer through the conformance kit.

Each invariant is its own test, parametrized over every registered mixer, so a failure names
the mixer and the invariant. Whether an invariant applies is decided here from the mixer's
declarations, independently of the kit: an invariant that should run must pass (a skip
where it applies fails the test), and one that does not apply must be reported skipped.
The properties and tolerances are the kit's (`seqlab.testing.mixers`): float64 to rtol 1e-9
/ atol 1e-10 for split, decode and layout equalities, an exactly zero gradient from the future.
"""

from __future__ import annotations

import pytest

from seqlab.registry import MIXERS
from seqlab.testing import MIXER_INVARIANT_NAMES, check_mixer

ALL = MIXERS.names()


def declares(name: str, layout: str) -> bool:
    return layout in MIXERS.get(name).declared("layouts")


def fixed_state(name: str) -> bool:
    return declares(name, "causal") and MIXERS.get(name).declared("state_kind") == "fixed"


def assert_invariant(name: str, invariant: str, applies: bool) -> None:
    report = check_mixer(name, only=[invariant])  # raises ConformanceError on a failure
    outcome = report[invariant]
    expected = "pass" if applies else "skip"
    assert outcome.status == expected, f"{name}: {invariant} {outcome.status}: {outcome.detail}"
    assert report.names == list(MIXER_INVARIANT_NAMES)


@pytest.mark.parametrize("name", ALL)
def test_split_and_token_by_token_match_full_sequence_float64(name):
    assert_invariant(name, "split_decode", declares(name, "causal"))


@pytest.mark.parametrize("name", ALL)
def test_split_across_chunk_boundaries_matches_full_sequence_float64(name):
    """T = 150 spans three 64-step chunks; the split point falls inside the second."""
    assert_invariant(name, "chunk_split", declares(name, "causal"))


@pytest.mark.parametrize("name", ALL)
def test_output_has_zero_gradient_from_future_inputs(name):
    assert_invariant(name, "causality", declares(name, "causal"))


@pytest.mark.parametrize("name", ALL)
def test_bidirectional_layout_reads_both_directions(name):
    assert_invariant(name, "bidirectional", declares(name, "bidirectional"))


@pytest.mark.parametrize("name", ALL)
def test_state_size_is_reported_and_matches_the_returned_state(name):
    assert_invariant(name, "state_size", declares(name, "causal"))


@pytest.mark.parametrize("name", ALL)
def test_fixed_state_holds_no_view_of_the_prefill(name):
    """The memory a fixed-size state keeps alive does not grow with the prefill length."""
    assert_invariant(name, "fixed_state_storage", fixed_state(name))


@pytest.mark.parametrize("name", ALL)
def test_two_layer_model_learns_periodic_copy(name):
    """Every mixer learns: a causal one under the AR loss, one without the causal layout
    (hydra) under the masked-diffusion bound in its bidirectional layout."""
    assert_invariant(name, "learns", True)


@pytest.mark.parametrize("name", ALL)
def test_block_diffusion_equals_reading_each_block_from_the_cached_prefix(name):
    """[x_t ; x_0] in one pass equals what block-wise sampling computes: prefill the clean
    blocks before j block-causally into the state (or KV cache), then read x_t^j
    bidirectionally from it; the clean half equals a block-causal pass over x_0. The kit
    runs (length, block) = (10, 4), (8, 1), (6, 6)."""
    assert_invariant(name, "block_diffusion_cached_prefix", declares(name, "block_diffusion"))


@pytest.mark.parametrize("name", ALL)
def test_noised_block_depends_only_on_its_clean_prefix_and_itself(name):
    """The attention formulation's semantics, by gradient: noised block j reads x_0^{<j} and
    x_t^j; clean block j reads x_0^{<=j}."""
    assert_invariant(name, "block_diffusion_reads", declares(name, "block_diffusion"))


@pytest.mark.parametrize("name", ALL)
def test_block_causal_continues_from_a_state_at_block_boundaries(name):
    assert_invariant(name, "block_causal_continuation", declares(name, "block_causal"))


@pytest.mark.parametrize("name", ALL)
def test_model_with_the_mixer_round_trips_save_and_load(name):
    assert_invariant(name, "save_load", True)


def test_every_kit_invariant_is_tested_here():
    tested = {
        "split_decode",
        "chunk_split",
        "causality",
        "bidirectional",
        "state_size",
        "fixed_state_storage",
        "learns",
        "block_diffusion_cached_prefix",
        "block_diffusion_reads",
        "block_causal_continuation",
        "save_load",
    }
    assert tested == set(MIXER_INVARIANT_NAMES)


def test_every_block_diffusion_mixer_also_declares_what_block_sampling_needs():
    """The block-diffusion mixers covered before the kit also had block_causal checked."""
    for name in ALL:
        if declares(name, "block_diffusion"):
            assert declares(name, "block_causal") and declares(name, "bidirectional"), name
