"""The fused selective scan (S6) against its references: the step loop through autograd and the
`diagonal_scan` (chunked) form; `fused_selective_scan`'s decay rules (Longhorn's through the
mixer's own tests in tests/mixers/test_longhorn.py, and here with a drive B independent of k)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.selective_scan import (
    choose_mode,
    default_chunk_size,
    fused_selective_scan,
    selective_scan,
)

F64 = torch.float64


def _inputs(
    batch: int, steps: int, channels: int, d_state: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """u, Δ (softplus, up to ~3 so that 2 exp(ΔA) − 1 goes negative), A < 0, B, C, D, h0."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    tensors = [
        randn(batch, steps, channels),
        F.softplus(randn(batch, steps, channels)),
        -torch.rand(channels, d_state, generator=gen, dtype=F64) * 3 - 0.05,
        randn(batch, steps, d_state),
        randn(batch, steps, d_state),
        randn(channels),
        randn(batch, channels, d_state),
    ]
    return [t.to(dtype) for t in tensors]


def _run(mode, inputs, weights, *, negative, with_state, chunk_size=None):
    """y, h_{T−1} and the gradients of every input of a loss that reads both."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y, h_last = selective_scan(
        *leaves[:6],
        negative_eigenvalues=negative,
        initial_state=leaves[6] if with_state else None,
        output_final_state=True,
        mode=mode,
        chunk_size=chunk_size,
    )
    loss = (y * weights[0]).sum() + (h_last * weights[1]).sum()
    grads = torch.autograd.grad(loss, leaves if with_state else leaves[:6])
    return [y.detach(), h_last.detach(), *grads]


def _weights(inputs, seed):
    gen = torch.Generator().manual_seed(seed + 7)
    return [
        torch.randn(t.shape, generator=gen, dtype=F64).to(t.dtype) for t in (inputs[0], inputs[6])
    ]


NAMES = ["y", "h_last", "du", "ddt", "dA", "dB", "dC", "dD", "dh0"]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("negative", [False, True], ids=["positive", "negative_eig"])
@pytest.mark.parametrize("steps", [1, 17, 130])
def test_fused_matches_step_loop_float64(steps, negative, with_state):
    inputs = _inputs(2, steps, 5, 3, F64, seed=steps)
    weights = _weights(inputs, steps)
    ref = _run("loop", inputs, weights, negative=negative, with_state=with_state)
    for chunk_size in (None, 1, 16, 64):
        out = _run(
            "fused",
            inputs,
            weights,
            negative=negative,
            with_state=with_state,
            chunk_size=chunk_size,
        )
        assert len(out) == len(ref)
        for name, got, want in zip(NAMES, out, ref, strict=False):
            torch.testing.assert_close(
                got, want, rtol=1e-10, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}"
            )


@pytest.mark.parametrize("negative", [False, True], ids=["positive", "negative_eig"])
def test_fused_matches_chunked_diagonal_scan_float64(negative):
    inputs = _inputs(3, 100, 8, 4, F64, seed=5)
    weights = _weights(inputs, 5)
    ref = _run("chunked", inputs, weights, negative=negative, with_state=True)
    out = _run("fused", inputs, weights, negative=negative, with_state=True, chunk_size=16)
    for name, got, want in zip(NAMES, out, ref, strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-10, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("negative", [False, True], ids=["positive", "negative_eig"])
def test_fused_float32_agrees_with_float64(negative):
    inputs = _inputs(4, 130, 16, 8, F64, seed=11)
    weights = _weights(inputs, 11)
    ref = _run("loop", inputs, weights, negative=negative, with_state=True)
    out = _run(
        "fused",
        [t.float() for t in inputs],
        [w.float() for w in weights],
        negative=negative,
        with_state=True,
    )
    for name, got, want in zip(NAMES, out, ref, strict=True):
        assert got.dtype == torch.float32
        scale = want.abs().max()
        err = (got.double() - want).abs().max()
        assert err <= 1e-4 * scale + 1e-5, f"{name}: max error {err:.2e}, scale {scale:.2e}"


def test_chunks_compose_through_the_state_and_decode_one_step_at_a_time():
    u, dt, A, B, C, D, h0 = _inputs(2, 40, 6, 4, F64, seed=3)
    full, h_full = selective_scan(u, dt, A, B, C, D, initial_state=h0, output_final_state=True)
    h = h0
    ys = []
    for t in range(40):  # decoding: T = 1 per call, carrying the state
        y, h = selective_scan(
            u[:, t : t + 1],
            dt[:, t : t + 1],
            A,
            B[:, t : t + 1],
            C[:, t : t + 1],
            D,
            initial_state=h,
            output_final_state=True,
            mode="fused",
        )
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_full, rtol=1e-12, atol=1e-12)


def test_gradients_of_final_state_only_and_of_outputs_only():
    inputs = _inputs(2, 33, 5, 3, F64, seed=8)
    for mode in ("fused", "loop"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, h = selective_scan(
            *leaves[:6], initial_state=leaves[6], output_final_state=True, mode=mode
        )
        g_h = torch.autograd.grad(h.square().sum(), leaves, allow_unused=True)
        if mode == "fused":
            fused_h = g_h
        else:
            for got, want in zip(fused_h, g_h, strict=True):
                if want is None:
                    assert got is None or not got.abs().any()
                else:
                    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    y, _ = selective_scan(*[t.clone().requires_grad_() for t in inputs[:6]], mode="fused")
    assert y.requires_grad


def test_final_state_only_when_asked_and_no_grad_path():
    u, dt, A, B, C, D, _ = _inputs(1, 9, 4, 2, torch.float32, seed=1)
    assert selective_scan(u, dt, A, B, C, D, mode="fused")[1] is None
    with torch.no_grad():
        y, h = selective_scan(u, dt, A, B, C, D, output_final_state=True, mode="fused")
    assert y.shape == (1, 9, 4) and h.shape == (1, 4, 2)


def test_auto_mode_rule_and_chunk_size():
    assert choose_mode(32, 80, 128, 16) == "fused"
    assert choose_mode(1, 8192, 128, 16) == "fused"
    assert choose_mode(1, 8192, 16, 4) == "chunked"
    assert default_chunk_size(32, 128, 16) == 4
    assert default_chunk_size(1, 128, 16) == 128
    assert default_chunk_size(1, 4, 1) == 256 and default_chunk_size(64, 4096, 64) == 2
    inputs = _inputs(1, 20, 4, 2, F64, seed=2)  # 8 state elements a step: "chunked"
    auto = selective_scan(*inputs[:6], initial_state=inputs[6], output_final_state=True)
    fused = selective_scan(
        *inputs[:6], initial_state=inputs[6], output_final_state=True, mode="fused"
    )
    for got, want in zip(auto, fused, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    u, dt, A, B, C, D, h0 = _inputs(2, 5, 4, 3, F64, seed=0)
    with pytest.raises(ValueError, match="mode"):
        selective_scan(u, dt, A, B, C, D, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, dt, A, B, C, D, chunk_size=0)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(u, dt, A, B[:, :, :2], C, D)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(u, dt, A, B, C, D, initial_state=h0[:1])
    with pytest.raises(TypeError, match="dtype"):
        selective_scan(u, dt.float(), A, B, C, D)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("steps", [1, 13])
def test_longhorn_rule_with_a_drive_apart_from_k_matches_step_loop_float64(steps, with_state):
    """a_t = 1 − ε_t ⊗ k_t² with B ≠ k, so that k's gradient through the decay alone is
    checked (the Longhorn mixer's scan passes B = k)."""
    gen = torch.Generator().manual_seed(steps)
    batch, channels, d_state = 2, 5, 3
    v, eps = (
        torch.randn(batch, steps, channels, generator=gen, dtype=F64),
        torch.rand(batch, steps, channels, generator=gen, dtype=F64),
    )
    k, B, C = (torch.randn(batch, steps, d_state, generator=gen, dtype=F64) / 2 for _ in "kBC")
    h0 = torch.randn(batch, channels, d_state, generator=gen, dtype=F64)
    weights = [torch.randn(batch, steps, channels, generator=gen, dtype=F64), torch.randn_like(h0)]
    results = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in (v, eps, k, B, C, h0)]
        v_, eps_, k_, B_, C_, h = leaves
        if fused:
            y, h = fused_selective_scan(
                v_,
                B_,
                C_,
                "longhorn",
                (eps_, k_),
                initial_state=h if with_state else None,
                chunk_size=4,
            )
        else:
            h = h if with_state else torch.zeros_like(h0)
            ys = []
            for t in range(steps):
                a = 1 - eps_[:, t, :, None] * k_[:, t, None, :] ** 2
                h = a * h + v_[:, t, :, None] * B_[:, t, None, :]
                ys.append((h * C_[:, t, None, :]).sum(-1))
            y = torch.stack(ys, 1)
        loss = (y * weights[0]).sum() + (h * weights[1]).sum()
        results.append([y, h, *torch.autograd.grad(loss, leaves if with_state else leaves[:5])])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


def test_fused_selective_scan_s6_rule_is_selective_scans_fused_form():
    u, dt, A, B, C, _, h0 = _inputs(2, 13, 5, 3, F64, seed=1)
    for negative, rule in ((False, "s6"), (True, "s6_negative")):
        want = selective_scan(
            u,
            dt,
            A,
            B,
            C,
            negative_eigenvalues=negative,
            initial_state=h0,
            output_final_state=True,
            mode="fused",
            chunk_size=4,
        )
        got = fused_selective_scan(dt * u, B, C, rule, (dt, A), initial_state=h0, chunk_size=4)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="decay"):
        fused_selective_scan(u, B, C, "exp", (dt, A))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must have shape"):
        fused_selective_scan(u, B, C, "longhorn", (dt, B[:, :, :2]))
    with pytest.raises(ValueError, match="A must have shape"):
        fused_selective_scan(u, B, C, "s6", (dt, A.t()))
