"""Tests for seqlab.ops.generalized_delta_rule: chunked WY form against the step-by-step
reference, in float64, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqlab.ops.generalized_delta_rule as generalized_delta_rule_module
from seqlab.ops.generalized_delta_rule import (
    generalized_delta_rule,
    generalized_delta_rule_reference,
)

NAMES = ("q", "k", "v", "g", "a", "b")


def make_inputs(
    B: int, T: int, H: int, K: int, V: int, *, g_min: float = -0.6, seed: int = 0
) -> dict[str, torch.Tensor]:
    """RWKV-7-shaped inputs: a = -κ̂, b = κ̂ ⊙ iclr with a unit κ̂, g ~ U[g_min, 0]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    removal = F.normalize(randn(B, T, H, K), dim=-1)
    rate = torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    return {
        "q": randn(B, T, H, K),
        "k": randn(B, T, H, K),
        "v": randn(B, T, H, V),
        "g": g_min * torch.rand(B, T, H, K, generator=gen, dtype=torch.float64),
        "a": -removal,
        "b": removal * rate,
        "initial_state": randn(B, H, K, V),
    }


def run(x: dict[str, torch.Tensor], **options) -> tuple[torch.Tensor, ...]:
    return generalized_delta_rule(
        *(x[n] for n in NAMES),
        initial_state=x.get("initial_state"),
        output_final_state=True,
        output_chunk_states=True,
        **options,
    )


# T, K, V, chunk, with initial state, g_min. T=13 with chunk 4 ends in a partial chunk, T=1
# is one token, T=40 with chunk 40 spans three sub-chunks (16 + 16 + 8) in one chunk, and
# g_min=-60 decays (~e^-1100) far below float64's exp range across a chunk of 37 tokens.
CASES = [
    (13, 5, 3, 4, True, -0.6),
    (13, 3, 7, 4, False, -0.6),
    (1, 4, 4, 8, True, -0.6),
    (1, 4, 4, 1, False, -0.6),
    (40, 6, 5, 40, True, -2.0),
    (37, 4, 3, 64, True, -60.0),
    (70, 8, 4, 32, False, -1.0),
]


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "sub-chunks"])
@pytest.mark.parametrize(("T", "K", "V", "chunk", "with_state", "g_min"), CASES)
def test_chunk_matches_reference_forward_and_backward_float64(
    T, K, V, chunk, with_state, g_min, factored, monkeypatch
):
    """Both ways of forming the decayed scores: factored through the chunk start (chunks whose
    decay span allows it) and by explicit sub-chunks (forced here by a negative span)."""
    if not factored:
        monkeypatch.setattr(generalized_delta_rule_module, "_FACTOR_SPAN", -1.0)
    x = make_inputs(2, T, 2, K, V, g_min=g_min, seed=T + K)
    if not with_state:
        del x["initial_state"]
    leaves = {name: t.requires_grad_() for name, t in x.items()}
    gen = torch.Generator().manual_seed(1)
    n = -(-T // chunk)
    weights = (
        torch.randn(2, T, 2, V, generator=gen, dtype=torch.float64),
        torch.randn(2, 2, K, V, generator=gen, dtype=torch.float64),
        torch.randn(2, n, 2, K, V, generator=gen, dtype=torch.float64),
    )
    results = {}
    for mode in ("recurrent", "chunk"):
        outputs = run(x, mode=mode, chunk_size=chunk, scale=0.8)
        loss = sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results[mode] = (outputs, dict(zip(leaves, grads, strict=True)))
    (ref_out, ref_grad), (chk_out, chk_grad) = results["recurrent"], results["chunk"]
    for what, ref, chk in zip(("o", "final", "chunk states"), ref_out, chk_out, strict=True):
        torch.testing.assert_close(chk, ref, rtol=1e-9, atol=1e-9, msg=what)
    for name in leaves:
        torch.testing.assert_close(chk_grad[name], ref_grad[name], rtol=1e-8, atol=1e-8, msg=name)


def test_reference_matches_dense_per_step_transition_products():
    B, T, H, K, V, scale = 1, 6, 2, 3, 4, 0.7
    x = make_inputs(B, T, H, K, V)
    o, s, _ = run(x, mode="recurrent", scale=scale)
    for h in range(H):
        state = x["initial_state"][0, h]
        for t in range(T):
            q, k, v, g, a, b = (x[n][0, t, h] for n in NAMES)
            transition = torch.diag(g.exp()) + torch.outer(b, a)
            state = transition @ state + torch.outer(k, v)
            torch.testing.assert_close(o[0, t, h], scale * state.T @ q)
        torch.testing.assert_close(s[0, h], state)


def test_chunk_states_are_the_states_after_each_prefix():
    x = make_inputs(1, 11, 2, 4, 3, seed=5)
    _, _, starts = run(x, chunk_size=4)
    for j, end in enumerate((0, 4, 8)):
        prefix = {n: t[:, :end] for n, t in x.items() if n != "initial_state"}
        prefix["initial_state"] = x["initial_state"]
        expected = x["initial_state"] if end == 0 else run(prefix, chunk_size=4)[1]
        torch.testing.assert_close(starts[:, j], expected, rtol=1e-10, atol=1e-10)


def test_reference_is_the_recurrent_mode_and_float32_stays_float32():
    x = {n: t.float() for n, t in make_inputs(1, 5, 1, 4, 2).items()}
    o, s = generalized_delta_rule_reference(
        *(x[n] for n in NAMES), initial_state=x["initial_state"], output_final_state=True
    )
    o_chunk, s_chunk = generalized_delta_rule(
        *(x[n] for n in NAMES), initial_state=x["initial_state"], output_final_state=True
    )
    assert o.dtype == s.dtype == torch.float32
    torch.testing.assert_close(o_chunk, o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_chunk, s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "fused"}, "mode must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"g": torch.zeros(1, 5, 1, 3)}, r"g must have shape \[B, T, H, K\]"),
        ({"initial_state": torch.zeros(1, 1, 4, 3)}, "initial_state must have shape"),
    ],
)
def test_bad_inputs_raise(change, message):
    x = {n: t.float() for n, t in make_inputs(1, 5, 1, 4, 2).items()}
    options = {n: change.pop(n) for n in ("mode", "chunk_size") if n in change}
    x.update(change)
    with pytest.raises(ValueError, match=message):
        run(x, **options)
