import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.mamba import Mamba, selective_scan
from seqlab.model import build_model

F64 = torch.float64


def selective_scan_loop(u, dt, A, B, C, D, *, negative_eigenvalues, initial_state):
    """Reference S6, one step at a time: h_t = a_t h_{t−1} + Δ_t u_t B_t, y_t = h_t C_t + D u_t."""
    h = initial_state
    ys = []
    for t in range(u.shape[1]):
        decay = torch.exp(dt[:, t, :, None] * A)
        if negative_eigenvalues:
            decay = 2 * decay - 1
        h = decay * h + (dt[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_parallel_selective_scan_matches_step_loop_float64(negative_eigenvalues):
    gen = torch.Generator().manual_seed(1)
    batch, steps, channels, n = 2, 70, 5, 3  # 70 steps span two scan chunks
    inputs = [
        torch.randn(batch, steps, channels, generator=gen, dtype=F64),
        F.softplus(torch.randn(batch, steps, channels, generator=gen, dtype=F64)),
        -torch.rand(channels, n, generator=gen, dtype=F64) * 3,
        torch.randn(batch, steps, n, generator=gen, dtype=F64),
        torch.randn(batch, steps, n, generator=gen, dtype=F64),
        torch.randn(channels, generator=gen, dtype=F64),
        torch.randn(batch, channels, n, generator=gen, dtype=F64),
    ]
    weight = torch.randn(batch, steps, channels, generator=gen, dtype=F64)
    results = []
    for scan in (selective_scan, selective_scan_loop):
        leaves = [t.clone().requires_grad_() for t in inputs]
        kwargs = {"negative_eigenvalues": negative_eigenvalues, "initial_state": leaves[-1]}
        if scan is selective_scan:
            kwargs["output_final_state"] = True
        y, h_last = scan(*leaves[:-1], **kwargs)
        grads = torch.autograd.grad((y * weight).sum() + h_last.sum(), leaves)
        results.append((y, h_last, grads))
    (y, h, grads), (y_ref, h_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-9, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10)


def test_negative_eigenvalues_give_decays_in_open_interval_minus_one_one():
    dt_a = -torch.logspace(-4, 1, 200, dtype=F64)
    steps = 6
    u = torch.zeros(1, steps, 200, dtype=F64)
    u[:, 0] = 1.0
    dt = (-dt_a).expand(1, steps, 200)
    ones = torch.ones(1, steps, 1, dtype=F64)
    A = -torch.ones(200, 1, dtype=F64)
    impulse, _ = selective_scan(
        u / dt, dt, A, ones, ones, torch.zeros(200, dtype=F64), negative_eigenvalues=True
    )
    decay = impulse[0, 1] / impulse[0, 0]
    torch.testing.assert_close(decay, 2 * dt_a.exp() - 1)
    assert (decay > -1).all() and (decay < 1).all() and (decay < 0).any() and (decay > 0).any()
    negative = decay < 0
    signs = impulse[0, :, negative].sign()
    assert (signs[1:] == -signs[:-1]).all()  # negative decays flip the state's sign each step


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_block_matches_reference_loop_float64(negative_eigenvalues):
    m = Mamba(16, d_state=4, negative_eigenvalues=negative_eigenvalues).double()
    with torch.no_grad():
        m.dt_proj.bias.uniform_(-1.0, 3.0)  # Δ up to ~3: 2 exp(ΔA) − 1 reaches below 0
    x = torch.randn(2, 9, 16, dtype=F64)
    u, z = m.in_proj(x).chunk(2, dim=-1)
    u, _ = m.conv(u)
    dt, B, C = m.x_proj(u).split([m.dt_rank, 4, 4], dim=-1)
    y, _ = selective_scan_loop(
        u,
        F.softplus(m.dt_proj(dt)),
        -m.A_log.exp(),
        B,
        C,
        m.D,
        negative_eigenvalues=negative_eigenvalues,
        initial_state=torch.zeros(2, m.d_inner, 4, dtype=F64),
    )
    torch.testing.assert_close(m(x)[0], m.out(y * F.silu(z)), rtol=1e-9, atol=1e-10)


def test_init_gives_s4d_real_A_unit_D_and_log_uniform_dt():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer="mamba", d_model=64, n_layers=2, vocab_size=16))
    for block in model.blocks:
        m = block.mixer
        torch.testing.assert_close(-m.A_log.exp(), -torch.arange(1.0, 17.0).expand(m.d_inner, 16))
        torch.testing.assert_close(m.D, torch.ones(m.d_inner))
        dt = F.softplus(m.dt_proj.bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
        log_dt = dt.log()
        span = math.log(0.1) - math.log(1e-3)
        # log-uniform: the log spans most of the range, centred in it
        assert log_dt.max() - log_dt.min() > 0.9 * span
        assert abs(log_dt.mean().item() - (math.log(0.1) + math.log(1e-3)) / 2) < 0.1 * span
        bound = m.dt_rank**-0.5
        assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.std() > 0.3 * bound
    assert m.dt_rank == 4 and m.state_size(10) == m.d_inner * 16 + 3 * m.d_inner


def test_projections_keep_the_reference_uniform_init_so_the_selective_path_starts_alive():
    """The reference Mamba leaves in_proj / x_proj / out_proj at PyTorch's U(±fan_in^−½)
    (out_proj rescaled per layer); the model-wide Normal(0, 0.02) made the bilinear
    Δ·B·C path 2e-5 of the D skip at init and training sat at chance on selective copying."""
    torch.manual_seed(0)
    config = ModelConfig(mixer="mamba", d_model=64, n_layers=2, vocab_size=16)
    model = build_model(config)
    m = model.blocks[0].mixer
    for linear in (m.in_proj, m.x_proj):
        bound = linear.in_features**-0.5
        assert linear.weight.abs().max() <= bound
        assert abs(linear.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    out_bound = m.out.in_features**-0.5 / math.sqrt(2 * config.n_layers)
    assert m.out.weight.abs().max() <= out_bound * (1 + 1e-6)
    assert m.out.weight.abs().max() > 0.9 * out_bound
    # the conv keeps U(±conv_size^−½) weights but a zero bias (a measured departure, see Mamba)
    conv_bound = m.conv.kernel_size**-0.5
    assert m.conv.weight.abs().max() <= conv_bound and m.conv.weight.std() > 0.4 * conv_bound
    assert torch.count_nonzero(m.conv.bias) == 0

    # the selective part of S6 (y − D·u) against the skip D·u, on the first layer's input
    x = model.blocks[0].mixer_norm(model.embed(torch.randint(0, 16, (4, 64))))
    u, _ = m.in_proj(x).chunk(2, dim=-1)
    u, _ = m.conv(u)
    dt, B, C = m.x_proj(u).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = F.softplus(m.dt_proj(dt))
    y, _ = selective_scan(u, dt, -m.A_log.exp(), B, C, torch.zeros_like(m.D))
    assert y.std() > 1e-3 * u.std()  # 3e-3 here; 2e-5 under Normal(0, 0.02)


def test_mimetic_init_ties_c_to_b_and_starts_with_little_decay():
    """`mimetic`: C's rows of W_x start equal to B's (so C_t·B_s = B_t·B_s ≥ 0 on the diagonal:
    each input matches itself, as attention with q = k), and A_n = −n/100; the rest is the
    reference init. The tie is an init only: both rows train apart."""
    torch.manual_seed(0)
    options = {"mamba": {"mimetic": True}}
    config = ModelConfig(mixer="mamba", d_model=64, n_layers=2, vocab_size=16)
    model = build_model(dataclasses.replace(config, mixer_options=options))
    for block in model.blocks:
        m = block.mixer
        _, w_b, w_c = m.x_proj.weight.split([m.dt_rank, m.d_state, m.d_state])
        assert torch.equal(w_b, w_c) and w_b.abs().max() > 0
        n = torch.arange(1, m.d_state + 1, dtype=m.A_log.dtype)
        torch.testing.assert_close(-m.A_log.exp(), -(n / 100).expand(m.d_inner, m.d_state))
        torch.testing.assert_close(m.D, torch.ones(m.d_inner))
    reference = build_model(config).blocks[0].mixer
    _, w_b, w_c = reference.x_proj.weight.split([reference.dt_rank, *[reference.d_state] * 2])
    assert not torch.allclose(w_b, w_c)  # untied without the option

    x = torch.randn(2, 12, 64)
    m.zero_grad()
    m(x)[0].square().sum().backward()
    grad_b, grad_c = m.x_proj.weight.grad[m.dt_rank :].split(m.d_state)
    assert not torch.allclose(grad_b, grad_c)  # so the rows part after the first step

    with pytest.raises(ConfigError, match="mamba mimetic must be true or false"):
        Mamba(16, mimetic="yes")


@pytest.mark.parametrize("mixer", ["mamba", "s4d"])
def test_trainer_puts_no_weight_decay_on_the_ssm_spectrum(mixer):
    """The papers do not decay A or the time step; other matrices are decayed."""
    from seqlab.config import TrainConfig
    from seqlab.train.loop import build_optimizer

    model = build_model(ModelConfig(mixer=mixer, d_model=32, n_layers=1, vocab_size=16))
    m = model.blocks[0].mixer
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    if mixer == "mamba":
        spectrum, decayed = (m.A_log, m.D, m.dt_proj.bias), (m.x_proj.weight, m.in_proj.weight)
    else:
        spectrum = (m.ssm.log_dt, m.ssm.log_A_real, m.ssm.A_imag)
        decayed = (m.ssm.C, m.in_proj.weight)
    assert all(id(p) in no_decay for p in spectrum)
    assert not any(id(p) in no_decay for p in decayed)
