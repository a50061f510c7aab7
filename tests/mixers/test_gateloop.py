import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.common import group_norm
from seqlab.mixers.gateloop import (
    GateLoop,
    complex_state,
    gateloop_attention,
    gateloop_decay,
    gateloop_scan_loop,
)
from seqlab.model import build_model
from seqlab.testing import check_mixer

F64 = torch.float64


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize(("steps", "chunk"), [(1, 4), (13, 4), (67, 16), (131, 64)])
def test_rotated_kernel_matches_complex_step_loop_forward_and_backward_float64(steps, chunk, mode):
    """Odd shapes (3 heads, K = 5, V = 7, T across chunks), a non-zero complex initial state
    and running phase; outputs, final state and every input's gradient (through the
    magnitude and phase of the decay as well). The initial phase only changes the frame the
    state is kept in, so the results do not depend on it."""
    gen = torch.Generator().manual_seed(steps + chunk)
    b, h, k, v = 2, 3, 5, 7
    leaves = [
        torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # q
        torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # k
        torch.randn(b, steps, h, v, generator=gen, dtype=F64),  # v
        torch.randn(b, steps, h, k, generator=gen, dtype=F64) + 2,  # magnitude logits
        3 * torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # phases
        torch.randn(b, h, k, v, 2, generator=gen, dtype=F64),  # S_{−1} as real pairs
    ]
    start_phase = (10 * torch.randn(b, h, k, generator=gen, dtype=F64)).requires_grad_()
    weight = torch.randn(b, steps, h, v, generator=gen, dtype=F64)
    weight_s = torch.randn(b, h, k, v, 2, generator=gen, dtype=F64)
    results = []
    for fast in (True, False):
        q, key, val, mag, phase, s0 = (t.clone().requires_grad_() for t in leaves)
        s0c = torch.view_as_complex(s0)
        if fast:
            framed = torch.polar(torch.ones_like(start_phase), -start_phase)[..., None] * s0c
            rotated = torch.cat([framed.real, -framed.imag], dim=-2)
            o, last, last_phase = gateloop_attention(
                q, key, val, mag, phase, initial_state=rotated, initial_phase=start_phase,
                output_final_state=True, mode=mode, chunk_size=chunk,
            )  # fmt: skip
            s = complex_state(last, last_phase)
        else:
            o, s = gateloop_scan_loop(q, key, val, gateloop_decay(mag, phase), initial_state=s0c)
        loss = (o * weight).sum() + (torch.view_as_real(s) * weight_s).sum()
        inputs = (q, key, val, mag, phase, s0) + ((start_phase,) if fast else ())
        results.append((o, s, torch.autograd.grad(loss, inputs)))
    (o, s, grads), (o_ref, s_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=False):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads[-1], torch.zeros_like(start_phase), rtol=0, atol=1e-9)


def test_running_phase_wraps_so_float32_keeps_long_rotations():
    """Phases summed over 4096 steps reach ~4000 rad; wrapped in float64 they stay exact, so a
    float32 run matches the float64 one to float32 precision."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 4096, 1, 2)
    q, k = (
        torch.randn(shape, generator=gen, dtype=F64),
        torch.randn(shape, generator=gen, dtype=F64),
    )
    v = torch.randn(1, 4096, 1, 3, generator=gen, dtype=F64)
    mag = torch.full(shape, 3.0, dtype=F64)
    phase = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=F64)
    o64, *_ = gateloop_attention(q, k, v, mag, phase)
    o32, *_ = gateloop_attention(*(t.float() for t in (q, k, v, mag, phase)))
    torch.testing.assert_close(o32.double(), o64, rtol=1e-3, atol=1e-3)


def test_decay_is_inside_the_unit_disc_and_rotates():
    mag = torch.tensor([-30.0, 0.0, 30.0], dtype=F64)
    a = gateloop_decay(mag, torch.tensor([0.0, torch.pi / 2, 1.0], dtype=F64))
    assert a.is_complex() and (a.abs() < 1).all() and (a.abs() > 0).all()
    torch.testing.assert_close(a[1], torch.tensor(0.5j, dtype=a.dtype), atol=1e-12, rtol=0)


def test_mixer_matches_reference_loop_float64():
    torch.manual_seed(0)
    m = GateLoop(12, 3, expand_k=1.0, conv_size=3).double()
    x = torch.randn(2, 71, 12, dtype=F64)
    qkv, _ = m.conv(m.qkv(x))
    q, k, v = (u.unflatten(-1, (3, 4)) for u in qkv.split([12, 12, 12], -1))
    mag, phase = m.decay(x).chunk(2, dim=-1)
    a = gateloop_decay(mag, phase).unflatten(-1, (3, 4))
    o, _ = gateloop_scan_loop(q / 2, k, v, a)
    expected = m.out(F.silu(m.gate(x)) * group_norm(m.norm, o))
    torch.testing.assert_close(m(x)[0], expected, rtol=1e-9, atol=1e-10)


def test_init_state_size_and_flops():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer="gateloop", d_model=32, n_heads=4, vocab_size=16))
    m = model.blocks[0].mixer
    assert (m.heads, m.state_k, m.state_v) == (4, 4, 8)
    magnitude = torch.sigmoid(m.decay.bias[:16]).view(4, 4)
    torch.testing.assert_close(magnitude[0], torch.linspace(0.5, 0.99, 4))
    assert torch.count_nonzero(m.decay.bias[16:]) == 0
    state = m.init_state(3)
    assert state.s.shape == (3, 4, 8, 8) and state.phase.shape == (3, 4, 4)
    assert state.conv.shape == (3, 3, 64)
    assert m.state_size(10) == 4 * 4 * (2 * 8 + 1) + 3 * 64
    assert m.mixing_flops(10) > 0
    assert GateLoop(32, 4, conv_size=0).init_state(2).conv is None


def test_gateloop_without_conv_passes_split_and_state_checks():
    report = check_mixer("gateloop", only=["split_decode", "state_size"], conv_size=0)
    assert report.passed, str(report)


@pytest.mark.parametrize(
    "options",
    [
        {"expand_k": 0},
        {"expand_v": -1.0},
        {"expand_k": 0.3},
        {"conv_size": -1},
        {"conv_size": 2.5},
        {"heads": 0},
        {"heads": 5},
        {"chunk_size": 48},
        {"chunk_size": 0},
    ],
)
def test_bad_option_is_a_config_error(options):
    options = {"heads": 4, **options}
    with pytest.raises(ConfigError, match="gateloop"):
        GateLoop(16, **options)
    heads = options.pop("heads")
    with pytest.raises(ConfigError):
        build_model(
            ModelConfig(
                mixer="gateloop",
                d_model=16,
                n_heads=4,
                vocab_size=8,
                mixer_options={"gateloop": {**options, "heads": heads}},
            )
        )
