"""Tests for seqlab.ops.linear_attention.gated_linear_attention."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.linear_attention import gated_linear_attention

GATES = ("per_key", "per_head", "none")


def _make_inputs(
    gate: str,
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    *,
    with_state: bool,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    g_range: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor | None]:
    """Random q, k, v, log decay g (≤ 0) of the given gate kind, and optionally S_0."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g_shape = {"per_key": (B, T, H, K), "per_head": (B, T, H), "none": None}[gate]
    g = None
    if g_shape is not None:
        if g_range is None:
            g = F.logsigmoid(randn(*g_shape) + 1.0)
        else:
            lo, hi = g_range
            g = lo + (hi - lo) * torch.rand(*g_shape, generator=gen, dtype=torch.float64)
    inputs = {
        "q": randn(B, T, H, K),
        "k": randn(B, T, H, K),
        "v": randn(B, T, H, V),
        "g": g,
        "initial_state": randn(B, H, K, V) if with_state else None,
    }
    return {name: None if x is None else x.to(dtype) for name, x in inputs.items()}


def _outputs_and_grads(
    inputs: dict[str, torch.Tensor | None], seed: int = 1, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Run the op with output_final_state and return (o, S_T, d(random-weighted sum)/d inputs)."""
    leaves = {
        name: x.detach().clone().requires_grad_() for name, x in inputs.items() if x is not None
    }
    args = {name: leaves.get(name) for name in inputs}
    o, final = gated_linear_attention(
        args["q"],
        args["k"],
        args["v"],
        args["g"],
        initial_state=args["initial_state"],
        output_final_state=True,
        **kwargs,
    )
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    w_s = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(final.dtype)
    loss = (o * w_o).sum() + (final * w_s).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return o.detach(), final.detach(), dict(zip(leaves, grads, strict=True))


def _grid() -> list[pytest.param]:
    """Every gate × T × chunk size × with/without S_0; (K, V) alternates so each gate and
    S_0 setting sees both the K < V and the K > V case."""
    dims = ((12, 60), (60, 12))
    cases = []
    for gate, (i, T), (j, chunk), with_state in itertools.product(
        GATES, enumerate((1, 63, 130)), enumerate((16, 32, 64)), (False, True)
    ):
        K, V = dims[(i + j + with_state) % 2]
        name = f"{gate}-T{T}-C{chunk}-K{K}V{V}-{'h0' if with_state else 'zero_h0'}"
        cases.append(pytest.param(gate, T, chunk, K, V, with_state, id=name))
    return cases


@pytest.mark.parametrize(("gate", "T", "chunk_size", "K", "V", "with_state"), _grid())
def test_chunk_matches_recurrent_outputs_state_and_grads_float64(
    gate: str, T: int, chunk_size: int, K: int, V: int, with_state: bool
) -> None:
    inputs = _make_inputs(gate, 2, T, 2, K, V, with_state=with_state)
    o_ref, s_ref, g_ref = _outputs_and_grads(inputs, mode="recurrent")
    o, s, grads = _outputs_and_grads(inputs, mode="chunk", chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-10)
    assert grads.keys() == g_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], g_ref[name], atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("gate", GATES)
def test_chunk_backward_matches_finite_differences(gate: str) -> None:
    inputs = _make_inputs(gate, 1, 7, 1, 3, 2, with_state=True)
    names = [n for n, x in inputs.items() if x is not None]

    def chunked(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        args = dict(zip(names, tensors, strict=True))
        return gated_linear_attention(**args, output_final_state=True, chunk_size=4)

    leaves = [inputs[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(chunked, leaves)


@pytest.mark.parametrize("gate", GATES)
def test_recurrent_matches_brute_force_unrolled_sum(gate: str) -> None:
    B, T, H, K, V = 1, 6, 2, 3, 4
    inputs = _make_inputs(gate, B, T, H, K, V, with_state=True)
    q, k, v, g, h0 = (inputs[n] for n in ("q", "k", "v", "g", "initial_state"))
    o, final = gated_linear_attention(
        q, k, v, g, initial_state=h0, output_final_state=True, mode="recurrent"
    )

    # o_t = scale·Σ_{s≤t} (q_t ⊙ exp(G_t − G_s))·k_s v_s + scale·(q_t ⊙ exp(G_t))ᵀ S_0
    scale = K**-0.5
    log_decay = torch.zeros(B, T, H, K, dtype=torch.float64) if g is None else g
    if log_decay.dim() == 3:
        log_decay = log_decay.unsqueeze(-1).expand(B, T, H, K)
    G = log_decay.cumsum(1)
    expected = torch.zeros(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        q_t = q[:, t] * G[:, t].exp()
        expected[:, t] += scale * torch.einsum("bhk,bhkv->bhv", q_t, h0)
        for s in range(t + 1):
            score = (q[:, t] * (G[:, t] - G[:, s]).exp() * k[:, s]).sum(-1, keepdim=True)
            expected[:, t] += scale * score * v[:, s]
    expected_final = G[:, -1].exp().unsqueeze(-1) * h0
    for s in range(T):
        key = k[:, s] * (G[:, -1] - G[:, s]).exp()
        expected_final += key.unsqueeze(-1) * v[:, s].unsqueeze(-2)

    torch.testing.assert_close(o, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(final, expected_final, atol=1e-12, rtol=1e-12)


def test_per_head_gate_equals_per_key_gate_broadcast_over_keys() -> None:
    inputs = _make_inputs("per_head", 2, 70, 2, 12, 20, with_state=True)
    per_key = dict(inputs, g=inputs["g"].unsqueeze(-1).expand(-1, -1, -1, 12))
    o_head, s_head, g_head = _outputs_and_grads(inputs, chunk_size=32)
    o_key, s_key, g_key = _outputs_and_grads(per_key, chunk_size=32)
    torch.testing.assert_close(o_head, o_key, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s_head, s_key, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(g_head["g"], g_key["g"].sum(-1), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_explicit_scale_multiplies_default_scaled_output(mode: str) -> None:
    inputs = _make_inputs("per_key", 2, 40, 2, 16, 8, with_state=True)
    o_default, s_default = gated_linear_attention(**inputs, mode=mode, output_final_state=True)
    o, s = gated_linear_attention(**inputs, mode=mode, scale=0.3, output_final_state=True)
    torch.testing.assert_close(o, o_default * (0.3 / 16**-0.5), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s, s_default, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("gate", ["per_key", "per_head"])
def test_grads_with_fixed_gate_not_requiring_grad_match_recurrent(gate: str) -> None:
    """RetNet-style fixed decays: only q, k, v, S_0 require grad."""
    inputs = _make_inputs(gate, 2, 50, 2, 12, 20, with_state=True)
    names = ("q", "k", "v", "initial_state")
    grads = []
    for mode in ("recurrent", "chunk"):
        leaves = [inputs[n].clone().requires_grad_() for n in names]
        q, k, v, h0 = leaves
        o, s = gated_linear_attention(
            q, k, v, inputs["g"], initial_state=h0, output_final_state=True, mode=mode
        )
        grads.append(torch.autograd.grad(o.sum() + s.sum(), leaves))
    for name, got, expected in zip(names, grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("gate", ["per_key", "per_head"])
def test_strong_decay_float32_chunk_is_finite_and_matches_float64(gate: str) -> None:
    """With log decay down to −5 per step the cumulative decay over a 64-chunk reaches ≈ −320,
    so any exp(−G) factor would overflow float32; outputs and gradients must stay finite."""
    inputs64 = _make_inputs(gate, 2, 200, 2, 32, 16, with_state=True, g_range=(-5.0, 0.0))
    assert (inputs64["g"][:, :64].sum(1) < -88.8).all()  # exp(88.8) overflows float32
    inputs32 = {n: None if x is None else x.float() for n, x in inputs64.items()}
    o_ref, s_ref, g_ref = _outputs_and_grads(inputs64, mode="recurrent")
    o, s, grads = _outputs_and_grads(inputs32, mode="chunk", chunk_size=64)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        torch.testing.assert_close(grads[name].double(), g_ref[name], atol=5e-4, rtol=1e-4)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("mode", "split"), [("chunk", 37), ("chunk", 64), ("recurrent", 37)])
def test_split_sequence_with_carried_state_matches_single_call(
    gate: str, mode: str, split: int
) -> None:
    inputs = _make_inputs(gate, 2, 100, 2, 12, 20, with_state=True)
    kwargs = {"mode": mode, "chunk_size": 16, "output_final_state": True}
    o_full, s_full = gated_linear_attention(**inputs, **kwargs)

    def part(x: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
        return None if x is None else x[:, sl]

    state = inputs["initial_state"]
    outputs = []
    for sl in (slice(None, split), slice(split, None)):
        o, state = gated_linear_attention(
            *(part(inputs[n], sl) for n in ("q", "k", "v", "g")), initial_state=state, **kwargs
        )
        outputs.append(o)
    torch.testing.assert_close(torch.cat(outputs, dim=1), o_full, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state, s_full, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_output_dtype_follows_q_and_state_is_float32_or_float64(mode: str) -> None:
    inputs = _make_inputs("per_key", 1, 9, 2, 4, 6, with_state=False)
    q, k, v, g = (inputs[n] for n in ("q", "k", "v", "g"))
    low = [x.to(torch.bfloat16) for x in (q, k, v, g)]
    o, final = gated_linear_attention(*low, mode=mode, output_final_state=True)
    assert o.dtype == torch.bfloat16 and o.shape == (1, 9, 2, 6)
    assert final.dtype == torch.float32 and final.shape == (1, 2, 4, 6)
    o, final = gated_linear_attention(q, k, v, g, mode=mode, output_final_state=True)
    assert o.dtype == torch.float64 and final.dtype == torch.float64
    assert gated_linear_attention(q, k, v, g, mode=mode)[1] is None


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_empty_sequence_returns_empty_output_and_initial_state(mode: str) -> None:
    inputs = _make_inputs("per_head", 2, 0, 3, 4, 5, with_state=True)
    o, final = gated_linear_attention(**inputs, mode=mode, output_final_state=True)
    assert o.shape == (2, 0, 3, 5)
    torch.testing.assert_close(final, inputs["initial_state"])


def _bad_input_cases() -> list[pytest.param]:
    B, T, H, K, V = 2, 63, 3, 12, 7

    def base(**overrides: object) -> dict[str, object]:
        args: dict[str, object] = {
            "q": torch.zeros(B, T, H, K),
            "k": torch.zeros(B, T, H, K),
            "v": torch.zeros(B, T, H, V),
            "g": None,
        }
        args.update(overrides)
        return args

    return [
        pytest.param(
            base(q=torch.zeros(B, T, H * K)),
            "q must have shape [B,T,H,K] (4 dims), got (2,63,36)",
            id="q_3d",
        ),
        pytest.param(
            base(k=torch.zeros(B, T, H, K + 1)),
            "k must have shape [B,T,H,K]=(2,63,3,12), got (2,63,3,13)",
            id="k_shape",
        ),
        pytest.param(
            base(v=torch.zeros(B, T - 1, H, V)),
            "v must have shape [B,T,H,V]=(2,63,3,V), got (2,62,3,7)",
            id="v_shape",
        ),
        pytest.param(
            base(g=torch.zeros(B, T, H, V)),
            "g must have shape [B,T,H,K]=(2,63,3,12) or [B,T,H]=(2,63,3), got (2,63,3,7)",
            id="g_shape",
        ),
        pytest.param(
            base(initial_state=torch.zeros(B, H, V, K)),
            "initial_state must have shape [B,H,K,V]=(2,3,12,7), got (2,3,7,12)",
            id="initial_state_shape",
        ),
        pytest.param(
            base(mode="parallel"),
            "mode must be 'chunk' or 'recurrent', got 'parallel'",
            id="unknown_mode",
        ),
        pytest.param(
            base(chunk_size=48),
            "chunk_size must be a positive power of two, got 48",
            id="chunk_size_not_power_of_two",
        ),
        pytest.param(
            base(chunk_size=0),
            "chunk_size must be a positive power of two, got 0",
            id="chunk_size_zero",
        ),
    ]


@pytest.mark.parametrize(("kwargs", "message"), _bad_input_cases())
def test_bad_input_raises_value_error_with_expected_shape(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        gated_linear_attention(**kwargs)
