"""Chunked parallel scans against their step-by-step loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.scan import diagonal_scan, log_space_scan

F64 = torch.float64


def _decays(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Decays with ``|a| < 1``: real in (-1, 1), complex with random phase."""
    if dtype.is_complex:
        mag = torch.rand(shape, generator=gen, dtype=F64).sqrt()
        phase = torch.rand(shape, generator=gen, dtype=F64) * 2 * torch.pi
        return torch.polar(mag, phase).to(dtype)
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1).to(dtype)


def _real_loss(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A real scalar that depends on every real and imaginary component of ``h``."""
    if h.is_complex():
        return (h.real * w + h.imag * w.flip(-1)).sum()
    return (h * w).sum()


def _scan_and_grads(mode, a, b, h0, w, **kw):
    leaves = [t.detach().requires_grad_() for t in (a, b, h0)]
    h, final = diagonal_scan(*leaves[:2], initial_state=leaves[2], mode=mode, **kw)
    grads = torch.autograd.grad(_real_loss(h, w) + _real_loss(final, w[:, 0]), leaves)
    return h.detach(), final.detach(), grads


def _assert_parallel_matches_recurrent(a, b, h0, chunk_size, gen):
    w = torch.randn(b.shape, generator=gen, dtype=F64)
    kw = {"output_final_state": True}
    ref = _scan_and_grads("recurrent", a, b, h0, w, **kw)
    par = _scan_and_grads("parallel", a, b, h0, w, chunk_size=chunk_size, **kw)
    torch.testing.assert_close(par[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(par[1], ref[1], rtol=1e-10, atol=1e-12)
    for g_par, g_ref in zip(par[2], ref[2], strict=True):
        assert torch.isfinite(torch.view_as_real(g_par) if g_par.is_complex() else g_par).all()
        torch.testing.assert_close(g_par, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("dim", [12, 60])
@pytest.mark.parametrize("steps", [1, 63, 130])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_parallel_matches_recurrent_forward_and_grads(dtype, steps, dim, chunk_size):
    gen = torch.Generator().manual_seed(steps * 1000 + dim + chunk_size)
    a = _decays((2, steps, dim), dtype, gen)
    b = torch.randn((2, steps, dim), generator=gen, dtype=dtype)
    h0 = torch.randn((2, dim), generator=gen, dtype=dtype)
    _assert_parallel_matches_recurrent(a, b, h0, chunk_size, gen)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_exact_zero_decays_are_exact_and_have_finite_grads(dtype):
    gen = torch.Generator().manual_seed(1)
    a = _decays((2, 130, 12), dtype, gen)
    a[:, ::5] = 0
    a[:, 40:90] = 0
    b = torch.randn((2, 130, 12), generator=gen, dtype=dtype)
    h0 = torch.randn((2, 12), generator=gen, dtype=dtype)
    _assert_parallel_matches_recurrent(a, b, h0, 16, gen)
    h, _ = diagonal_scan(torch.zeros_like(b), b, initial_state=h0, chunk_size=16)
    assert torch.equal(h, b)


def test_negative_decays_match_recurrent():
    gen = torch.Generator().manual_seed(2)
    a = -torch.rand((2, 130, 12), generator=gen, dtype=F64)
    a[:, 1::2] *= -1
    b = torch.randn((2, 130, 12), generator=gen, dtype=F64)
    h0 = torch.randn((2, 12), generator=gen, dtype=F64)
    _assert_parallel_matches_recurrent(a, b, h0, 32, gen)
    h, _ = diagonal_scan(torch.full((1, 7, 1), -1.0), torch.ones(1, 7, 1))
    assert h.flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("decay", [0.9999, 1e-3, 1e-30], ids=["near_one", "small", "tiny"])
def test_float32_is_stable_over_4096_steps(decay):
    gen = torch.Generator().manual_seed(3)
    b32 = torch.randn((1, 4096, 8), generator=gen).requires_grad_()
    a32 = torch.full_like(b32, decay).requires_grad_()
    ref, _ = diagonal_scan(a32.double(), b32.double(), mode="recurrent")
    h, _ = diagonal_scan(a32, b32)
    h.sum().backward()
    assert h.dtype == torch.float32
    assert torch.isfinite(a32.grad).all() and torch.isfinite(b32.grad).all()
    scale = ref.abs().max().item()
    assert (h.double() - ref).abs().max().item() <= 2e-5 * scale


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_split_call_with_carried_state_equals_one_call(dtype, mode):
    gen = torch.Generator().manual_seed(4)
    a = _decays((2, 130, 12), dtype, gen)
    b = torch.randn((2, 130, 12), generator=gen, dtype=dtype)
    full, final = diagonal_scan(a, b, mode=mode, chunk_size=16, output_final_state=True)
    first, mid = diagonal_scan(a[:, :50], b[:, :50], mode=mode, output_final_state=True)
    second, end = diagonal_scan(
        a[:, 50:], b[:, 50:], initial_state=mid, mode=mode, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([first, second], dim=1), full)
    torch.testing.assert_close(end, final)


def test_final_state_is_none_unless_requested():
    a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)
    for mode in ("parallel", "recurrent"):
        assert diagonal_scan(a, b, mode=mode)[1] is None
        assert log_space_scan(a.log(), b, mode=mode)[1] is None


def test_trailing_dims_and_broadcast_decays():
    gen = torch.Generator().manual_seed(5)
    a = torch.rand((2, 70, 4, 1), generator=gen, dtype=F64)
    b = torch.randn((2, 70, 4, 3), generator=gen, dtype=torch.complex128)
    h0 = torch.randn((2, 4, 3), generator=gen, dtype=F64)
    h, final = diagonal_scan(a, b, initial_state=h0, chunk_size=16, output_final_state=True)
    ref, _ = diagonal_scan(a.expand_as(b), b, initial_state=h0, mode="recurrent")
    assert h.shape == (2, 70, 4, 3) and h.dtype == torch.complex128
    torch.testing.assert_close(h, ref)
    torch.testing.assert_close(final, ref[:, -1])


def test_invalid_arguments_raise():
    a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="mode"):
        diagonal_scan(a, b, mode="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        diagonal_scan(a, b, chunk_size=1)
    with pytest.raises(ValueError, match="broadcast"):
        diagonal_scan(torch.rand(2, 5, 4), b)
    with pytest.raises(ValueError, match=r"\[batch, \*D\] = \[2, 3\]"):
        diagonal_scan(a, b, initial_state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="time>=1"):
        diagonal_scan(torch.rand(2, 0, 3), torch.rand(2, 0, 3))
    with pytest.raises(TypeError, match="real"):
        log_space_scan(a.log().cfloat(), b)


def _log_inputs(steps: int, dim: int, seed: int, dtype: torch.dtype = F64):
    gen = torch.Generator().manual_seed(seed)
    log_a = -F.softplus(torch.randn((2, steps, dim), generator=gen, dtype=F64))
    log_b = torch.randn((2, steps, dim), generator=gen, dtype=F64)
    log_h0 = torch.randn((2, dim), generator=gen, dtype=F64)
    return log_a.to(dtype), log_b.to(dtype), log_h0.to(dtype), gen


def _log_scan_and_grads(mode, log_a, log_b, log_h0, w, **kw):
    leaves = [t.detach().requires_grad_() for t in (log_a, log_b, log_h0)]
    h, final = log_space_scan(
        *leaves[:2], initial_log_state=leaves[2], mode=mode, output_final_state=True, **kw
    )
    grads = torch.autograd.grad((h * w).sum() + final.sum(), leaves)
    return h.detach(), final.detach(), grads


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("steps", [1, 63, 130])
def test_log_space_parallel_matches_loop_forward_and_grads(steps, chunk_size):
    log_a, log_b, log_h0, gen = _log_inputs(steps, 12, steps + chunk_size)
    w = torch.randn(log_b.shape, generator=gen, dtype=F64)
    ref = _log_scan_and_grads("recurrent", log_a, log_b, log_h0, w)
    par = _log_scan_and_grads("parallel", log_a, log_b, log_h0, w, chunk_size=chunk_size)
    torch.testing.assert_close(par[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(par[1], ref[1], rtol=1e-10, atol=1e-12)
    for g_par, g_ref in zip(par[2], ref[2], strict=True):
        torch.testing.assert_close(g_par, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_log_space_matches_diagonal_scan_on_same_values(mode):
    log_a, log_b, log_h0, _ = _log_inputs(130, 12, 6)
    h, final = log_space_scan(
        log_a, log_b, initial_log_state=log_h0, mode=mode, chunk_size=32, output_final_state=True
    )
    ref, ref_final = diagonal_scan(
        log_a.exp(),
        log_b.exp(),
        initial_state=log_h0.exp(),
        mode="recurrent",
        output_final_state=True,
    )
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(final.exp(), ref_final, rtol=1e-10, atol=0)
    no_state, _ = log_space_scan(log_a, log_b, mode=mode, chunk_size=32)
    torch.testing.assert_close(no_state, diagonal_scan(log_a.exp(), log_b.exp())[0])


def test_log_space_split_call_with_carried_log_state_equals_one_call():
    log_a, log_b, _, _ = _log_inputs(130, 12, 7)
    full, final = log_space_scan(log_a, log_b, chunk_size=16, output_final_state=True)
    first, mid = log_space_scan(log_a[:, :50], log_b[:, :50], output_final_state=True)
    second, end = log_space_scan(
        log_a[:, 50:], log_b[:, 50:], initial_log_state=mid, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([first, second], dim=1), full)
    torch.testing.assert_close(end, final)


def test_log_space_float32_is_stable_over_4096_steps():
    log_a, log_b, _, _ = _log_inputs(4096, 8, 8, torch.float32)
    ref, _ = log_space_scan(log_a.double(), log_b.double(), mode="recurrent")
    la32, lb32 = log_a.requires_grad_(), log_b.requires_grad_()
    h, _ = log_space_scan(la32, lb32)
    h.sum().backward()
    assert torch.isfinite(la32.grad).all() and torch.isfinite(lb32.grad).all()
    torch.testing.assert_close(h.double(), ref, rtol=5e-5, atol=0)
