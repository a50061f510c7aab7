"""Tests for seqlab.ops.delta_rule: chunked WY form against the step-by-step reference."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.delta_rule import delta_rule, gated_delta_rule


def make_inputs(
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    *,
    beta_max: float = 1.0,
    g_min: float | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random q, L2-normalised k, v, beta ~ U[0, beta_max], g <= 0 and an initial state.

    ``g`` is ``logsigmoid`` of a normal draw, or ``U[g_min, 0]`` when ``g_min`` is given.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    if g_min is None:
        g = F.logsigmoid(randn(B, T, H))
    else:
        g = g_min * torch.rand(B, T, H, generator=gen, dtype=dtype)
    return {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "g": g,
        "beta": beta_max * torch.rand(B, T, H, generator=gen, dtype=dtype),
        "initial_state": randn(B, H, K, V),
    }


def call(op: str, x: dict[str, torch.Tensor], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``op`` ("delta" or "gated") on the inputs in ``x``, returning output and final state."""
    s0 = x.get("initial_state")
    if op == "delta":
        return delta_rule(
            x["q"], x["k"], x["v"], x["beta"], initial_state=s0, output_final_state=True, **kwargs
        )
    return gated_delta_rule(
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
        initial_state=s0,
        output_final_state=True,
        **kwargs,
    )


# op, T, K, V, chunk_size, with initial state, beta_max. T=130 leaves a 2-token tail at every
# chunk size, T=63 is one whole chunk at 64 and ends in a padded chunk at 16, T=1 is one token.
CHUNK_CASES = [
    ("gated", 130, 12, 60, 16, True, 2.0),
    ("gated", 130, 60, 12, 64, False, 1.0),
    ("gated", 63, 60, 12, 64, True, 1.0),
    ("gated", 1, 12, 60, 64, True, 2.0),
    ("delta", 130, 60, 12, 32, True, 2.0),
    ("delta", 63, 12, 60, 16, False, 2.0),
    ("delta", 1, 60, 12, 16, False, 1.0),
    ("delta", 130, 12, 60, 64, True, 1.0),
]


@pytest.mark.parametrize(
    ("op", "T", "K", "V", "chunk_size", "with_state", "beta_max"),
    CHUNK_CASES,
    ids=[f"{c[0]}-T{c[1]}-K{c[2]}-V{c[3]}-C{c[4]}-s{int(c[5])}-b{c[6]:g}" for c in CHUNK_CASES],
)
def test_chunk_matches_recurrent_forward_and_gradients_float64(
    op: str, T: int, K: int, V: int, chunk_size: int, with_state: bool, beta_max: float
) -> None:
    x = make_inputs(2, T, 2, K, V, beta_max=beta_max, seed=T + K)
    if op == "delta":
        del x["g"]
    if not with_state:
        del x["initial_state"]
    leaves = {name: t.requires_grad_() for name, t in x.items()}
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(2, T, 2, V, generator=gen, dtype=torch.float64)
    w_s = torch.randn(2, 2, K, V, generator=gen, dtype=torch.float64)

    results = {}
    for mode in ("recurrent", "chunk"):
        o, s = call(op, x, mode=mode, chunk_size=chunk_size)
        grads = torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), list(leaves.values()))
        results[mode] = (o, s, dict(zip(leaves, grads, strict=True)))

    (o_ref, s_ref, g_ref), (o_chk, s_chk, g_chk) = results["recurrent"], results["chunk"]
    torch.testing.assert_close(o_chk, o_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s_chk, s_ref, rtol=1e-9, atol=1e-9)
    for name in leaves:
        torch.testing.assert_close(g_chk[name], g_ref[name], rtol=1e-8, atol=1e-8, msg=name)


def test_recurrent_matches_dense_per_step_matrix_products() -> None:
    B, T, H, K, V, scale = 2, 7, 2, 3, 4, 0.7
    x = make_inputs(B, T, H, K, V, beta_max=2.0)
    o, s = call("gated", x, mode="recurrent", scale=scale)

    eye = torch.eye(K, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            state = x["initial_state"][b, h]
            for t in range(T):
                k_t, v_t, q_t = x["k"][b, t, h], x["v"][b, t, h], x["q"][b, t, h]
                beta_t, decay_t = x["beta"][b, t, h], x["g"][b, t, h].exp()
                transition = decay_t * (eye - beta_t * torch.outer(k_t, k_t))
                state = transition @ state + beta_t * torch.outer(k_t, v_t)
                torch.testing.assert_close(o[b, t, h], scale * state.T @ q_t)
            torch.testing.assert_close(s[b, h], state)


@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_beta_one_with_orthonormal_keys_stores_values_exactly(mode: str) -> None:
    B, T, H, K, V = 1, 8, 2, 8, 5
    gen = torch.Generator().manual_seed(3)
    keys = torch.linalg.qr(torch.randn(B * H, K, K, generator=gen, dtype=torch.float64)).Q
    k = keys.mT.reshape(B, H, T, K).transpose(1, 2)  # k[:, t, h] is column t of an orthogonal Q
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    beta = torch.ones(B, T, H, dtype=torch.float64)

    o, s = delta_rule(k, k, v, beta, scale=1.0, output_final_state=True, mode=mode, chunk_size=3)

    torch.testing.assert_close(o, v)  # S_t^T k_t = v_t
    recalled = torch.einsum("bhkv,bthk->bthv", s, k)  # the last state still holds every pair
    torch.testing.assert_close(recalled, v)


def test_strong_decay_float32_chunk_is_finite_and_matches_float64_reference() -> None:
    x64 = make_inputs(1, 200, 2, 64, 64, beta_max=2.0, g_min=-5.0, seed=7)
    x32 = {name: t.float().requires_grad_() for name, t in x64.items()}
    leaves64 = {name: t.requires_grad_() for name, t in x64.items()}

    o32, s32 = call("gated", x32, mode="chunk", chunk_size=64)
    o64, s64 = call("gated", x64, mode="recurrent")
    assert o32.dtype == torch.float32 and s32.dtype == torch.float32
    assert torch.isfinite(o32).all() and torch.isfinite(s32).all()
    torch.testing.assert_close(o32, o64.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s32, s64.float(), rtol=1e-4, atol=1e-4)

    grads32 = torch.autograd.grad(o32.sum() + s32.sum(), list(x32.values()))
    grads64 = torch.autograd.grad(o64.sum() + s64.sum(), list(leaves64.values()))
    for name, g32, g64 in zip(x32, grads32, grads64, strict=True):
        assert torch.isfinite(g32).all(), name
        torch.testing.assert_close(g32, g64.float(), rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_split_call_with_carried_state_equals_one_call(mode: str) -> None:
    x = make_inputs(2, 96, 2, 16, 8, beta_max=2.0, seed=5)
    o_full, s_full = call("gated", x, mode=mode, chunk_size=16)

    head = {name: t[:, :40] for name, t in x.items() if name != "initial_state"}
    tail = {name: t[:, 40:] for name, t in x.items() if name != "initial_state"}
    o_head, s_head = call("gated", head | {"initial_state": x["initial_state"]}, mode=mode)
    o_tail, s_tail = call("gated", tail | {"initial_state": s_head}, mode=mode, chunk_size=16)

    torch.testing.assert_close(torch.cat([o_head, o_tail], dim=1), o_full)
    torch.testing.assert_close(s_tail, s_full)


@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_output_follows_q_dtype_and_state_is_float32_only_when_requested(mode: str) -> None:
    x = {name: t.bfloat16() for name, t in make_inputs(1, 5, 2, 4, 3).items()}
    o, s = call("gated", x, mode=mode)
    assert o.shape == (1, 5, 2, 3) and o.dtype == torch.bfloat16
    assert s.shape == (1, 2, 4, 3) and s.dtype == torch.float32

    o_default, none = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], mode=mode)
    assert none is None
    o_explicit, _ = gated_delta_rule(
        x["q"], x["k"], x["v"], x["g"], x["beta"], scale=4**-0.5, mode=mode
    )
    torch.testing.assert_close(o_default, o_explicit)


@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_empty_sequence_returns_empty_output_and_initial_state(mode: str) -> None:
    x = make_inputs(2, 0, 3, 4, 5)
    o, s = call("gated", x, mode=mode)
    assert o.shape == (2, 0, 3, 5)
    torch.testing.assert_close(s, x["initial_state"])


@pytest.mark.parametrize(
    ("name", "bad_shape", "expected"),
    [
        ("q", (2, 6, 3), "q must have shape [B, T, H, K] = (B, T, H, K)"),
        ("k", (2, 6, 3, 5), "k must have shape [B, T, H, K] = (2, 6, 3, 4)"),
        ("v", (2, 6, 2, 5), "v must have shape [B, T, H, V] = (2, 6, 3, V)"),
        ("beta", (2, 6, 3, 1), "beta must have shape [B, T, H] = (2, 6, 3)"),
        ("g", (2, 5, 3), "g must have shape [B, T, H] = (2, 6, 3)"),
        (
            "initial_state",
            (2, 3, 5, 4),
            "initial_state must have shape [B, H, K, V] = (2, 3, 4, 5)",
        ),
    ],
)
def test_bad_shape_raises_value_error_naming_expected_shape(
    name: str, bad_shape: tuple[int, ...], expected: str
) -> None:
    x = make_inputs(2, 6, 3, 4, 5)
    x[name] = torch.zeros(bad_shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(expected)) as err:
        call("gated", x)
    assert f"got {bad_shape}" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "parallel"}, "mode must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ],
)
def test_unknown_mode_or_bad_chunk_size_raises_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call("delta", make_inputs(1, 4, 1, 2, 2), **kwargs)
