import pytest
import torch

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.s4 import nplr
from seqlab.mixers.s7 import S7, STABLE_B, S7State, s7_reference

F64 = torch.float64


def mixer(**kwargs) -> S7:
    m = S7(16, **{"d_state": 8, "blocks": 2, "chunk_size": 4, **kwargs}).double()
    m.init_weights(0.2, 0.2)
    return m


def random_state(m: S7, batch: int) -> S7State:
    return S7State(torch.randn(batch, m.d_state // 2, 2, dtype=F64))


@pytest.mark.parametrize("steps, chunk_size", [(13, 4), (1, 4), (13, 64), (10, 5), (17, 2)])
def test_scan_equals_the_step_by_step_reference_forward_and_backward(steps, chunk_size):
    m = mixer(chunk_size=chunk_size)
    x = torch.randn(3, steps, 16, dtype=F64, requires_grad=True)
    for state in (None, random_state(m, 3)):
        expected, expected_state = s7_reference(m, x, state)
        y, new_state = m(x, state)
        torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)
        if state is not None:
            torch.testing.assert_close(new_state.h, expected_state.h, rtol=1e-9, atol=1e-10)
        grad_y = torch.randn_like(y)
        params = [x, m.w, m.lambda_im, m.B, m.C, m.D, m.step_proj.weight, m.gate.weight]
        got = torch.autograd.grad(y, params, grad_y)
        want = torch.autograd.grad(expected, params, grad_y)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_decode_token_by_token_equals_the_full_forward():
    m = mixer()
    x = torch.randn(2, 9, 16, dtype=F64)
    state, ys = m.init_state(2), []
    for t in range(9):
        y, state = m(x[:, t : t + 1], state)
        ys.append(y)
    full, final = m(x, m.init_state(2))
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.h, final.h, rtol=1e-9, atol=1e-10)
    assert state.h.numel() // 2 == m.state_size(9) == 8


def test_transition_depends_on_the_input_and_stays_inside_the_unit_disk():
    m = mixer()
    with torch.no_grad():
        m.w.uniform_(-50, 50)
        m.step_proj.bias.uniform_(-5, 5)
    decay, _ = m.selection(torch.randn(2, 5, 16, dtype=F64) * 10)
    assert (decay.abs() <= 1).all()  # |Ā| = exp(Re Λ · Δ), Re Λ < 0, Δ > 0
    assert (m.eigenvalues().real >= -1 / STABLE_B).all() and (m.eigenvalues().real < 0).all()
    assert decay[0, 0].sub(decay[0, 1]).abs().max() > 1e-3, "Ā_t is selected by u_t"


def test_initialisation_is_hippo_legs_per_block_through_the_stable_map():
    m = S7(16, d_state=12, blocks=3)
    lam = nplr("legs", 4)[0]
    eigenvalues = m.eigenvalues().to(torch.complex128)
    torch.testing.assert_close(eigenvalues, lam.repeat(3), rtol=1e-6, atol=1e-6)
    dt = torch.nn.functional.softplus(m.step_proj.bias)
    assert dt.min() >= 1e-2 * 0.999 and dt.max() <= 1.001


def test_every_layout_runs_and_the_bidirectional_one_reads_the_future():
    m = mixer()
    x = torch.randn(1, 8, 16, dtype=F64, requires_grad=True)
    y, _ = m(x, layout=Layout.BIDIRECTIONAL)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert (grad[:, 1:].abs().sum(-1) > 0).all()
    assert m(x, layout=Layout.block_causal(4))[0].shape == x.shape
    with pytest.raises(SeqlabError):
        m(x, m.init_state(1), layout=Layout.block_diffusion(2))


def test_no_mixing_matrix_for_the_mimo_state():
    assert not S7.linear_in_values
    with pytest.raises(SeqlabError):
        mixer().mixing(torch.randn(1, 3, 16, dtype=F64))


@pytest.mark.parametrize(
    "options",
    [{"d_state": 7}, {"d_state": 8, "blocks": 3}, {"blocks": 0}, {"chunk_size": 1},
     {"dt_min": 0.5, "dt_max": 0.1}],
)  # fmt: skip
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        S7(16, **options)
