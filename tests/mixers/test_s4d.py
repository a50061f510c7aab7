import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.layout import Layout
from seqlab.mixers.conv_ssm import SSMState
from seqlab.mixers.s4d import S4D, DiagonalSSM
from seqlab.ops.fftconv import fft_conv

F64 = torch.float64


def mixer(**kwargs) -> S4D:
    m = S4D(16, d_state=8, **kwargs).double()
    m.init_weights(0.2, 0.2)
    return m


def ssm_loop(ssm: DiagonalSSM, u: torch.Tensor, h: torch.Tensor | None = None):
    """Reference: h_t = Ā h_{t−1} + B̄ u_t, y_t = 2 Re(Σ_n C_n h_t,n), one step at a time."""
    dt_a, b_bar, c = ssm.discretize()
    h = torch.zeros(u.shape[0], *dt_a.shape, dtype=dt_a.dtype) if h is None else h
    ys = []
    for t in range(u.shape[1]):
        h = dt_a.exp() * h + b_bar * u[:, t, :, None]
        ys.append(2 * (c * h).sum(-1).real)
    return torch.stack(ys, 1), h


def block_reference(m: S4D, x: torch.Tensor, h: torch.Tensor | None = None):
    u, z = m.in_proj(x).chunk(2, dim=-1)
    y, h = ssm_loop(m.ssm, u, h)
    return m.out(F.gelu(y + m.D * u) * torch.sigmoid(z)), h


def test_fft_convolution_with_vandermonde_kernel_equals_recurrence_float64():
    ssm = DiagonalSSM(5, 8, init="inv", dt_min=1e-2, dt_max=0.5).double()
    u = torch.randn(2, 29, 5, dtype=F64)
    expected, _ = ssm_loop(ssm, u)
    kernel = ssm.kernel(29)
    torch.testing.assert_close(fft_conv(u, kernel)[0], expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fft_conv(u, kernel, mode="direct")[0], expected)


@pytest.mark.parametrize("chunk_size", [4, 13, 64])
def test_chunked_causal_form_equals_recurrence_from_any_state_float64(chunk_size):
    m = mixer(chunk_size=chunk_size)
    x = torch.randn(2, 13, 16, dtype=F64)
    expected, _ = block_reference(m, x)
    torch.testing.assert_close(m(x)[0], expected, rtol=1e-9, atol=1e-10)

    h0 = torch.randn(2, m.d_inner, 4, dtype=torch.complex128)
    expected, h_last = block_reference(m, x, h0)
    y, state = m(x, SSMState(torch.view_as_real(h0)))
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(torch.view_as_complex(state.h), h_last, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_initialisations_give_documented_eigenvalues(init):
    m = S4D(8, d_state=16, init=init)
    m.init_weights(0.02, 0.01)
    n = torch.arange(8, dtype=F64)
    imag = math.pi * n if init == "lin" else (16 / math.pi) * (16 / (2 * n + 1) - 1)
    for ssm in (m.ssm, m.ssm_reverse):
        eigenvalues = ssm.eigenvalues().to(torch.complex128)
        torch.testing.assert_close(eigenvalues.real, torch.full((16, 8), -0.5, dtype=F64))
        torch.testing.assert_close(eigenvalues.imag, imag.expand(16, 8))
        dt = ssm.log_dt.exp()
        assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert m.state_size(100) == m.d_inner * 16


def test_real_part_of_eigenvalues_stays_negative_under_any_parameter_value():
    ssm = DiagonalSSM(3, 4, init="lin", dt_min=1e-3, dt_max=1e-1)
    with torch.no_grad():
        ssm.log_A_real.uniform_(-30, 30)
    assert (ssm.eigenvalues().real < 0).all()


def test_bidirectional_kernel_reads_the_future_through_the_reverse_ssm_float64():
    m = mixer()
    x = torch.randn(2, 11, 16, dtype=F64)
    u, z = m.in_proj(x).chunk(2, dim=-1)
    forward, _ = ssm_loop(m.ssm, u)
    # The reverse SSM reads u_s, s > t, at lag s − t (lag 0 is the forward SSM's).
    dt_a, b_bar, c = m.ssm_reverse.discretize()
    future = torch.zeros_like(forward)
    for t in range(11):
        for s in range(t + 1, 11):
            tap = 2 * (c * b_bar * (dt_a * (s - t)).exp()).sum(-1).real
            future[:, t] += tap * u[:, s]
    expected = m.out(F.gelu(forward + future + m.D * u) * torch.sigmoid(z))
    y, _ = m(x, layout=Layout.BIDIRECTIONAL)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)

    x.requires_grad_(True)
    y, _ = m(x, layout=Layout.BIDIRECTIONAL)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert (grad[:, 1:].abs().sum(-1) > 0).all()
