"""FFT long convolution against its direct loop."""

from __future__ import annotations

import pytest
import torch

from seqlab.ops.fftconv import _next_fast_len, causal_fft_conv, fft_conv

F64 = torch.float64


def _kernel(length: int, dim: int, bidirectional: bool, gen: torch.Generator) -> torch.Tensor:
    shape = (2, length, dim) if bidirectional else (length, dim)
    return torch.randn(shape, generator=gen, dtype=F64)


def _conv_and_grads(mode, u, kernel, w, bidirectional):
    u, kernel = u.detach().requires_grad_(), kernel.detach().requires_grad_()
    y, state = fft_conv(u, kernel, bidirectional=bidirectional, mode=mode)
    assert state is None
    return (y.detach(), *torch.autograd.grad((y * w).sum(), (u, kernel)))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("full_length", [False, True], ids=["L<T", "L=T"])
@pytest.mark.parametrize("steps", [1, 63, 130])
def test_fft_matches_direct_forward_and_grads(steps, full_length, bidirectional):
    gen = torch.Generator().manual_seed(steps)
    length = steps if full_length else max(1, steps // 3)
    u = torch.randn((2, steps, 5), generator=gen, dtype=F64)
    kernel = _kernel(length, 5, bidirectional, gen)
    w = torch.randn(u.shape, generator=gen, dtype=F64)
    ref = _conv_and_grads("direct", u, kernel, w, bidirectional)
    fft = _conv_and_grads("fft", u, kernel, w, bidirectional)
    for got, want in zip(fft, ref, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_direct_matches_written_out_sums():
    u = torch.tensor([[1.0, 2.0, 3.0]]).unsqueeze(-1)
    kernel = torch.tensor([[10.0, 100.0], [20.0, 200.0]]).unsqueeze(-1)
    causal, _ = fft_conv(u, kernel[0], mode="direct")
    assert causal.flatten().tolist() == [10.0, 20.0 + 100.0, 30.0 + 200.0]
    both, _ = fft_conv(u, kernel, bidirectional=True, mode="direct")
    assert both.flatten().tolist() == [10.0 + 40.0 + 600.0, 120.0 + 60.0, 230.0]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_kernel_longer_than_sequence_is_truncated(bidirectional):
    gen = torch.Generator().manual_seed(1)
    u = torch.randn((2, 20, 3), generator=gen, dtype=F64)
    kernel = _kernel(50, 3, bidirectional, gen)
    y, _ = fft_conv(u, kernel, bidirectional=bidirectional)
    ref, _ = fft_conv(u, kernel[..., :20, :], bidirectional=bidirectional, mode="direct")
    torch.testing.assert_close(y, ref)


def _jacobian(u, kernel, bidirectional, mode):
    """``J[t, s] = ∂y_t / ∂u_s`` for one channel of a single sequence."""

    def fn(x):
        return fft_conv(x, kernel, bidirectional=bidirectional, mode=mode)[0]

    return torch.autograd.functional.jacobian(fn, u)[0, :, 0, 0, :, 0]


def test_causal_outputs_ignore_future_inputs():
    gen = torch.Generator().manual_seed(2)
    u = torch.randn((1, 40, 1), generator=gen, dtype=F64)
    kernel = _kernel(40, 1, False, gen)
    future = torch.ones(40, 40, dtype=torch.bool).triu(diagonal=1)
    direct = _jacobian(u, kernel, False, "direct")
    assert torch.equal(direct[future], torch.zeros_like(direct[future]))
    fft = _jacobian(u, kernel, False, "fft")
    # The FFT form is causal up to transform rounding, not bit-exactly.
    assert fft[future].abs().max() <= 1e-13 * fft.abs().max()
    torch.testing.assert_close(fft, direct, rtol=0, atol=1e-12)


def test_bidirectional_outputs_see_future_inputs():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn((1, 40, 1), generator=gen, dtype=F64)
    kernel = _kernel(40, 1, True, gen)
    future = torch.ones(40, 40, dtype=torch.bool).triu(diagonal=1)
    for mode in ("direct", "fft"):
        jac = _jacobian(u, kernel, True, mode)
        assert (jac[future].abs() > 1e-6).all()
        lags = torch.arange(40).unsqueeze(0) - torch.arange(40).unsqueeze(1)
        torch.testing.assert_close(jac[future], kernel[1, lags[future] - 1, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_keeps_input_dtype(dtype):
    u = torch.randn(2, 17, 4, dtype=dtype)
    y, _ = fft_conv(u, torch.randn(9, 4, dtype=dtype))
    assert y.dtype == dtype and y.shape == (2, 17, 4)


@pytest.mark.parametrize(
    ("u_shape", "k_shape", "bidirectional", "expected"),
    [
        ((2, 8), (8, 4), False, r"u of shape \[batch, time, dim\]"),
        ((2, 8, 4), (8, 3), False, r"causal kernel of shape \[L, D=4\]"),
        ((2, 8, 4), (2, 8, 4), False, r"causal kernel of shape \[L, D=4\]"),
        ((2, 8, 4), (8, 4), True, r"bidirectional kernel of shape \[2, L, D=4\]"),
        ((2, 8, 4), (3, 8, 4), True, r"bidirectional kernel of shape \[2, L, D=4\]"),
        ((2, 8, 4), (0, 4), False, r"L >= 1"),
    ],
)
def test_wrong_shapes_raise_naming_expected_shape(u_shape, k_shape, bidirectional, expected):
    with pytest.raises(ValueError, match=expected):
        fft_conv(torch.randn(u_shape), torch.randn(k_shape), bidirectional=bidirectional)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        fft_conv(torch.randn(1, 4, 2), torch.randn(4, 2), mode="conv")


def test_fft_size_is_smallest_5_smooth_at_least_n():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 600):
        got = _next_fast_len(n)
        assert got >= n and smooth(got)
        assert not any(smooth(m) for m in range(n, got))


def _blocked_and_grads(u, kernel, w, block):
    u, kernel = u.detach().requires_grad_(), kernel.detach().requires_grad_()
    y = causal_fft_conv(u, kernel, block=block) if block else fft_conv(u, kernel, mode="direct")[0]
    return (y.detach(), *torch.autograd.grad((y * w).sum(), (u, kernel)))


@pytest.mark.parametrize("kernel_length", ["L<T", "L=T", "L>T"])
@pytest.mark.parametrize(("steps", "block"), [(1, 4), (13, 4), (37, 4), (130, 16), (9, 64)])
def test_blocked_causal_fft_matches_direct_forward_and_grads(steps, block, kernel_length):
    gen = torch.Generator().manual_seed(steps + block)
    length = {"L<T": max(1, steps // 3), "L=T": steps, "L>T": steps + 5}[kernel_length]
    u = torch.randn((2, steps, 3), generator=gen, dtype=F64)
    kernel = _kernel(length, 3, False, gen)
    w = torch.randn(u.shape, generator=gen, dtype=F64)
    ref = _blocked_and_grads(u, kernel, w, None)
    got = _blocked_and_grads(u, kernel, w, block)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_blocked_causal_fft_ignores_future_inputs_exactly():
    gen = torch.Generator().manual_seed(4)
    u = torch.randn((1, 40, 1), generator=gen, dtype=F64)
    kernel = _kernel(40, 1, False, gen)
    jac = torch.autograd.functional.jacobian(lambda x: causal_fft_conv(x, kernel, block=4), u)[
        0, :, 0, 0, :, 0
    ]
    future = torch.ones(40, 40, dtype=torch.bool).triu(diagonal=1)
    assert torch.equal(jac[future], torch.zeros_like(jac[future]))
    torch.testing.assert_close(jac, _jacobian(u, kernel, False, "direct"), rtol=0, atol=1e-12)


def test_blocked_causal_fft_rejects_bad_block():
    with pytest.raises(ValueError, match="block"):
        causal_fft_conv(torch.randn(1, 4, 2), torch.randn(4, 2), block=0)
