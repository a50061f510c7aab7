import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.mixers.conv_ssm import SSMState
from seqlab.mixers.gss import GSS
from seqlab.model import build_model
from tests.mixers.test_s4d import ssm_loop

F64 = torch.float64


def mixer(**kwargs) -> GSS:
    m = GSS(16, d_state=8, **kwargs).double()
    m.init_weights(0.2, 0.2)
    return m


def gss_reference(m: GSS, x: torch.Tensor, h: torch.Tensor | None = None):
    """The layer from its equations, the SSM one step at a time:
    v = GELU(W_v x), u = GELU(W_u x), y = SSM(u) + D u, o = W_o((W_c y) ⊙ v)."""
    v = F.gelu(x @ m.to_v.weight.T)
    u = F.gelu(x @ m.to_u.weight.T)
    y, h = ssm_loop(m.ssm, u, h)
    return ((y + m.D * u) @ m.to_gate.weight.T * v) @ m.out.weight.T, h


def test_widths_follow_the_options():
    m = GSS(16, expand=3, ssm_reduction=2, d_state=6)
    assert (m.to_v.out_features, m.to_u.out_features, m.to_gate.in_features) == (48, 8, 8)
    assert m.d_inner == 8 and m.state_size(10) == 8 * 6


@pytest.mark.parametrize("steps, chunk_size", [(13, 4), (1, 4), (13, 64), (10, 5)])
def test_chunked_form_equals_the_step_by_step_reference_forward_and_backward(steps, chunk_size):
    m = mixer(chunk_size=chunk_size, init="inv")
    x = torch.randn(2, steps, 16, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, m.d_inner, 4, dtype=torch.complex128)
    for start in (None, h0):
        expected, h_last = gss_reference(m, x, start)
        state = None if start is None else SSMState(torch.view_as_real(start))
        y, new_state = m(x, state)
        torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-10)
        if start is not None:
            torch.testing.assert_close(torch.view_as_complex(new_state.h), h_last)
        grad_y = torch.randn_like(y)
        params = [x, m.to_u.weight, m.to_gate.weight, m.ssm.log_dt, m.ssm.A_imag, m.ssm.C]
        got = torch.autograd.grad(y, params, grad_y)
        want = torch.autograd.grad(expected, params, grad_y)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_decode_token_by_token_equals_the_full_forward():
    m = mixer(chunk_size=4)
    x = torch.randn(2, 9, 16, dtype=F64)
    state, ys = m.init_state(2), []
    for t in range(9):
        y, state = m(x[:, t : t + 1], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), m(x)[0], rtol=1e-9, atol=1e-10)


def test_bidirectional_layout_reads_the_future_and_keeps_the_gate():
    m = mixer()
    x = torch.randn(1, 7, 16, dtype=F64, requires_grad=True)
    y, state = m(x, layout=Layout.BIDIRECTIONAL)
    assert state is None
    (grad,) = torch.autograd.grad(y[:, 0].sum(), x)
    assert (grad[:, 1:].abs().sum(-1) > 0).all()


@pytest.mark.parametrize(
    "options",
    [{"expand": 0}, {"ssm_reduction": 0}, {"ssm_reduction": 3}, {"d_state": 5}, {"init": "x"},
     {"chunk_size": 0}, {"dt_min": 0.5, "dt_max": 0.1}],
)  # fmt: skip
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        GSS(16, **options)


def test_a_faithful_gss_stack_sets_mlp_ratio_0_and_has_no_feed_forward():
    config = ModelConfig(
        mixer="gss", d_model=16, n_layers=2, vocab_size=11, mlp_ratio=0,
        mixer_options={"gss": {"d_state": 4}},
    )  # fmt: skip
    model = build_model(config)
    names = {n for n, _ in model.named_parameters()}
    assert not any("mlp" in n for n in names), sorted(names)
    logits, _ = model(torch.randint(0, 11, (2, 5)))
    assert logits.shape == (2, 5, 11)
