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
    nplr,
    nplr_dense_reference,
    nplr_kernel_reference,
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


def recurrence(module: NPLRSSM, u: torch.Tensor, x: torch.Tensor):
    """Reference: the full complex state [x; x̄], x_t = Ā x_{t−1} + B̄ u_t, y_t = C x_t."""
    a_bar, b_bar, c = nplr_dense_reference(module)
    x = torch.cat([x, x.conj()], dim=-1)
    ys = []
    for t in range(u.shape[1]):
        x = torch.einsum("dmn,bdn->bdm", a_bar, x) + b_bar * u[:, t, :, None]
        ys.append((c * x).sum(-1).real)
    return torch.stack(ys, 1), x[..., : x.shape[-1] // 2]


@pytest.mark.parametrize("discretization", S4_DISCRETIZATIONS)
@pytest.mark.parametrize("chunk_size", [4, 64])
def test_chunked_causal_form_equals_recurrence_from_any_state_float64(discretization, chunk_size):
    torch.manual_seed(0)
    m = S4(8, d_state=6, init="legt", discretization=discretization, chunk_size=chunk_size)
    m = m.double()
    m.init_weights(0.2, 0.2)
    x = torch.randn(2, 13, 8, dtype=F64)
    u, z = m.in_proj(x).chunk(2, dim=-1)
    x0 = torch.randn(2, m.d_inner, 3, dtype=torch.complex128)
    for start in (torch.zeros_like(x0), x0):
        y, x_last = recurrence(m.ssm, u, start)
        expected = m.out(F.gelu(y + m.D * u) * torch.sigmoid(z))
        out, state = m(x, SSMState(torch.view_as_real(start)))
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(torch.view_as_complex(state.h), x_last, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(m(x)[0], m(x, m.init_state(2))[0], rtol=1e-9, atol=1e-10)


def test_decode_token_by_token_equals_full_causal_forward_float64():
    torch.manual_seed(0)
    m = S4(8, d_state=8, init="fout", chunk_size=4).double()
    m.init_weights(0.2, 0.2)
    x = torch.randn(2, 11, 8, dtype=F64)
    full, _ = m(x)
    state, steps = m.init_state(2), []
    for t in range(11):
        y, state = m(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)
    assert state.h[0].numel() == m.state_size(11) == m.d_inner * 8


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
