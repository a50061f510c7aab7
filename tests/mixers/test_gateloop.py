import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.common import group_norm
from seqlab.mixers.gateloop import GateLoop, gateloop_decay, gateloop_scan, gateloop_scan_loop
from seqlab.model import build_model
from seqlab.testing import check_mixer

F64 = torch.float64


@pytest.mark.parametrize("steps", [1, 67, 131])
def test_parallel_scan_matches_step_loop_forward_and_backward_float64(steps):
    """Odd shapes (T across the scan's 64-step chunks, 3 heads, K = 5, V = 7), a non-zero
    complex initial state; outputs, final state and every input's gradient (through the
    magnitude and phase of the decay as well)."""
    gen = torch.Generator().manual_seed(steps)
    b, h, k, v = 2, 3, 5, 7
    leaves = [
        torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # q
        torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # k
        torch.randn(b, steps, h, v, generator=gen, dtype=F64),  # v
        torch.randn(b, steps, h, k, generator=gen, dtype=F64) + 2,  # magnitude logits
        torch.randn(b, steps, h, k, generator=gen, dtype=F64),  # phases
        torch.randn(b, h, k, v, 2, generator=gen, dtype=F64),  # S_{−1} as real pairs
    ]
    weight = torch.randn(b, steps, h, v, generator=gen, dtype=F64)
    weight_s = torch.randn(b, h, k, v, 2, generator=gen, dtype=F64)
    results = []
    for parallel in (True, False):
        q, key, val, mag, phase, s0 = (t.clone().requires_grad_() for t in leaves)
        a, s0c = gateloop_decay(mag, phase), torch.view_as_complex(s0)
        if parallel:
            o, s = gateloop_scan(q, key, val, a, initial_state=s0c, output_final_state=True)
        else:
            o, s = gateloop_scan_loop(q, key, val, a, initial_state=s0c)
        loss = (o * weight).sum() + (torch.view_as_real(s) * weight_s).sum()
        results.append((o, s, torch.autograd.grad(loss, (q, key, val, mag, phase, s0))))
    (o, s, grads), (o_ref, s_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10)


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
    assert state.s.shape == (3, 4, 4, 8, 2) and state.conv.shape == (3, 3, 64)
    assert m.state_size(10) == 2 * 4 * 4 * 8 + 3 * 64
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
