import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.conv_ssm import SSMState
from seqlab.mixers.s4 import (
    NPLRSSM,
    S4,
    S4_DISCRETIZATIONS,
    S4_INITS,
    hippo,
    interleave,
    nplr,
    nplr_kernel_reference,
    nplr_recurrence_reference,
)
from seqlab.model import build_model

F64 = torch.float64
PARAMS = ("log_A_real", "A_imag", "P", "B", "C", "log_dt")


def ssm(init: str, discretization: str, channels: int = 3, d_state: int = 8) -> NPLRSSM:
    torch.manual_seed(0)
    module = NPLRSSM(
        channels, d_state, init=init, discretization=discretization, dt_min=1e-2, dt_max=0.5
    ).double()
    with torch.no_grad():  # move off the init so every parameter matters
        for name in PARAMS:
            param = getattr(module, name)
            param.add_(0.1 * torch.randn_like(param))
    return module


@pytest.mark.parametrize("init", S4_INITS)
def test_nplr_form_reconstructs_the_hippo_matrices_float64(init):
    a, b, p = hippo(init, 8)
    assert p.shape[0] == {"legs": 1, "legt": 2, "fout": 1}[init]
    normal = a + p.T @ p
    skew = normal - normal.diagonal().mean() * torch.eye(8, dtype=F64)
    torch.testing.assert_close(skew, -skew.T)
    lam, p_t, b_t, v = nplr(init, 8)
    v_full = torch.cat([v, v.conj()], dim=1)
    torch.testing.assert_close(v_full.mH @ v_full, torch.eye(8, dtype=v.dtype))
    lam, p_t, b_t = (torch.cat([t, t.conj()], dim=-1) for t in (lam, p_t, b_t))
    rebuilt = v_full @ (torch.diag(lam) - p_t.T @ p_t.conj()) @ v_full.mH
    torch.testing.assert_close(rebuilt, a.to(rebuilt.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(v_full @ b_t, b.to(b_t.dtype), rtol=0, atol=1e-12)


@pytest.mark.parametrize("discretization", S4_DISCRETIZATIONS)
@pytest.mark.parametrize("init", S4_INITS)
@pytest.mark.parametrize("length", [1, 13, 16])
def test_kernel_equals_materialised_powers_forward_and_backward_float64(
    init, discretization, length
):
    module = ssm(init, discretization)
    weights = torch.randn(length, 3, dtype=F64)
    params = [getattr(module, name) for name in PARAMS]
    fast = module.kernel(length)
    reference = nplr_kernel_reference(module, length)
    torch.testing.assert_close(fast, reference, rtol=1e-8, atol=1e-10)
    grads = torch.autograd.grad((fast * weights).sum(), params)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    for name, got, want in zip(PARAMS, grads, expected, strict=True):
        assert want.abs().max() > 0 or name == "P" and length == 1, name
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("discretization", S4_DISCRETIZATIONS)
@pytest.mark.parametrize("init", S4_INITS)
@pytest.mark.parametrize("steps", [1, 5])
def test_step_form_equals_dense_recurrence_forward_and_backward_float64(
    init, discretization, steps
):
    module = ssm(init, discretization)
    u = torch.randn(2, steps, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    y, h = module.recurrence(u, h0)
    x0 = torch.view_as_complex(h0.unflatten(-1, (-1, 2)))
    y_ref, x_ref = nplr_recurrence_reference(module, u, x0)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(h, interleave(x_ref), rtol=1e-9, atol=1e-10)
    wy, wh = torch.randn_like(y), torch.randn_like(h)
    inputs = [u, h0, *(getattr(module, name) for name in PARAMS)]
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), inputs)
    loss_ref = (y_ref * wy).sum() + (interleave(x_ref) * wh).sum()
    expected = torch.autograd.grad(loss_ref, inputs)
    for name, got, want in zip(("u", "h0", *PARAMS), grads, expected, strict=True):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=name)
    y_zero, _ = module.recurrence(u, None)
    expected_zero, _ = nplr_recurrence_reference(module, u, torch.zeros_like(x0))
    torch.testing.assert_close(y_zero, expected_zero, rtol=1e-9, atol=1e-10)


def s4(init: str, discretization: str, chunk_size: int = 4) -> S4:
    torch.manual_seed(0)
    d_state = 6 if init == "legt" else 8
    m = S4(8, d_state=d_state, init=init, discretization=discretization, chunk_size=chunk_size)
    m = m.double()
    m.init_weights(0.2, 0.2)
    return m


@pytest.mark.parametrize("discretization", S4_DISCRETIZATIONS)
@pytest.mark.parametrize("chunk_size", [4, 64])
@pytest.mark.parametrize("stepwise", [False, True])
def test_causal_forms_equal_recurrence_from_any_state_float64(
    discretization, chunk_size, stepwise, monkeypatch
):
    m = s4("legt", discretization, chunk_size)
    if not stepwise:  # the chunked form, which 13 steps would not take by default
        monkeypatch.setattr(m.ssm, "recurrent_steps", 0)
    assert (m.ssm.recurrent_steps >= 13) == stepwise
    x = torch.randn(2, 13, 8, dtype=F64)
    u, z = m.in_proj(x).chunk(2, dim=-1)
    x0 = torch.randn(2, m.d_inner, 3, dtype=torch.complex128)
    for start in (torch.zeros_like(x0), x0):
        y, x_last = nplr_recurrence_reference(m.ssm, u, start)
        expected = m.out(F.gelu(y + m.D * u) * torch.sigmoid(z))
        out, state = m(x, SSMState(torch.view_as_real(start)))
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(torch.view_as_complex(state.h), x_last, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(m(x)[0], m(x, m.init_state(2))[0], rtol=1e-9, atol=1e-10)


def no_dense_discretisation():
    raise AssertionError("the bilinear step must not discretise densely")


@pytest.mark.parametrize("discretization", S4_DISCRETIZATIONS)
@pytest.mark.parametrize("init", S4_INITS)
def test_decode_token_by_token_equals_full_chunked_forward_and_backward_float64(
    init, discretization, monkeypatch
):
    m = s4(init, discretization)
    x = torch.randn(2, 7, 8, dtype=F64)
    h0 = 0.5 * torch.randn_like(m.init_state(2).h)
    weights = torch.randn(2, 7, 8, dtype=F64)
    state_weights = torch.randn_like(h0)
    forward_params = {n: p for n, p in m.named_parameters() if "reverse" not in n}
    names, params = list(forward_params), list(forward_params.values())

    def loss(out, state):
        return (out * weights).sum() + (state.h * state_weights).sum()

    with monkeypatch.context() as patch:
        patch.setattr(m.ssm, "recurrent_steps", 0)
        full, last = m(x, SSMState(h0))
        expected = torch.autograd.grad(loss(full, last), params)
    if discretization == "bilinear":
        monkeypatch.setattr(m.ssm, "discretize", no_dense_discretisation)
    state, steps = SSMState(h0), []
    for t in range(7):
        y, state = m(x[:, t : t + 1], state)
        steps.append(y)
    decoded = torch.cat(steps, 1)
    torch.testing.assert_close(decoded, full, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.h, last.h, rtol=1e-9, atol=1e-10)
    grads = torch.autograd.grad(loss(decoded, state), params)
    for name, got, want in zip(names, grads, expected, strict=True):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=name)
    assert state.h[0].numel() == m.state_size(7) == m.d_inner * m.d_state


def test_real_part_of_the_diagonal_stays_negative_and_the_system_stable():
    module = ssm("legs", "bilinear")
    with torch.no_grad():
        module.log_A_real.uniform_(-30, 3)
        module.P.mul_(5)
    lam, *_ = module.parameters_complex()
    assert (lam.real < 0).all()
    a_bar, _, _ = module.discretize()
    assert torch.linalg.eigvals(a_bar).abs().max() < 1


@pytest.mark.parametrize(
    "options",
    [
        {"init": "lagt"},
        {"discretization": "euler"},
        {"d_state": 7},
        {"d_state": 0},
        {"chunk_size": 0},
        {"dt_min": 0.5, "dt_max": 0.1},
        {"expand": 0},
    ],
)
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError, match="s4"):
        build_model(ModelConfig(mixer="s4", d_model=16, mixer_options={"s4": options}))
