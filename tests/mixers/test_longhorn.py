import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.longhorn import Longhorn, longhorn_scan, longhorn_scan_loop
from seqlab.model import build_model

F64 = torch.float64


def _inputs(gen: torch.Generator, batch: int, steps: int, channels: int, n: int) -> list:
    return [
        torch.randn(batch, steps, channels, generator=gen, dtype=F64),  # u
        torch.sigmoid(torch.randn(batch, steps, channels, generator=gen, dtype=F64)),  # β
        torch.randn(batch, steps, n, generator=gen, dtype=F64),  # k
        torch.randn(batch, steps, n, generator=gen, dtype=F64),  # q
        torch.randn(channels, generator=gen, dtype=F64),  # D
        torch.randn(batch, channels, n, generator=gen, dtype=F64),  # h_{−1}
    ]


def _scan_outputs(mode, inputs, weights, *, with_state, reads_y=True, reads_h=True, **kw):
    """y, h_{T−1} and the gradients of every input (u, β, k, q, D, h_{−1}) of a loss that
    reads y and/or h_{T−1} with fixed random weights."""
    leaves = [t.clone().requires_grad_() for t in inputs[: 6 if with_state else 5]]
    y, h = longhorn_scan(
        *leaves[:5],
        initial_state=leaves[5] if with_state else None,
        output_final_state=True,
        mode=mode,
        **kw,
    )
    loss = reads_y * (y * weights[0]).sum() + reads_h * (h * weights[1]).sum()
    return [y, h, *torch.autograd.grad(loss, leaves)]


def _weights(gen, inputs):
    return [torch.randn(inputs[0].shape, generator=gen, dtype=F64)] + [
        torch.randn(inputs[5].shape, generator=gen, dtype=F64)
    ]


NAMES = ["y", "h_last", "du", "dbeta", "dk", "dq", "dD", "dh0"]


def _assert_all_close(got, want):
    assert len(got) == len(want)
    for name, a, b in zip(NAMES, got, want, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize(
    ("mode", "steps", "chunk_size"),
    [
        ("fused", 1, 4),
        ("fused", 13, 4),  # T not a multiple of the chunk
        ("fused", 16, 4),
        ("fused", 13, 1),
        ("fused", 67, None),  # the default chunk
        ("chunked", 1, None),
        ("chunked", 67, None),  # T not a multiple of diagonal_scan's 64-step chunks
        ("chunked", 131, None),
    ],
)
def test_scan_matches_step_loop_forward_and_backward_float64(mode, steps, chunk_size, with_state):
    """Odd channel and state counts; values, final state and every input's gradient."""
    gen = torch.Generator().manual_seed(steps)
    inputs = _inputs(gen, 3, steps, 5, 7)
    weights = _weights(gen, inputs)
    ref = _scan_outputs("loop", inputs, weights, with_state=with_state)
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    _assert_all_close(_scan_outputs(mode, inputs, weights, with_state=with_state, **kw), ref)


@pytest.mark.parametrize(("reads_y", "reads_h"), [(True, False), (False, True)])
def test_fused_backward_when_the_loss_reads_only_y_or_only_the_final_state(reads_y, reads_h):
    gen = torch.Generator().manual_seed(3)
    inputs = _inputs(gen, 2, 13, 4, 3)
    weights = _weights(gen, inputs)
    kw = {"with_state": True, "reads_y": reads_y, "reads_h": reads_h}
    ref = _scan_outputs("loop", inputs, weights, **kw)
    _assert_all_close(_scan_outputs("fused", inputs, weights, chunk_size=4, **kw), ref)


def test_auto_mode_is_fused_unless_the_state_is_tiny_and_bad_mode_is_an_error():
    gen = torch.Generator().manual_seed(0)
    u, beta, k, q, D, h0 = _inputs(gen, 2, 9, 32, 8)  # 2 · 32 · 8 = 512 state elements
    auto, _ = longhorn_scan(u, beta, k, q, D, initial_state=h0)
    fused, _ = longhorn_scan(u, beta, k, q, D, initial_state=h0, mode="fused")
    assert torch.equal(auto, fused)
    auto, _ = longhorn_scan(u[:1], beta[:1], k[:1], q[:1], D, initial_state=h0[:1])
    chunked, _ = longhorn_scan(
        u[:1], beta[:1], k[:1], q[:1], D, initial_state=h0[:1], mode="chunked"
    )
    assert torch.equal(auto, chunked)
    with pytest.raises(ValueError, match="mode"):
        longhorn_scan(u, beta, k, q, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must have shape"):
        longhorn_scan(u, beta, k, q[..., :3], mode="fused")


def test_step_is_the_online_regression_minimiser_and_the_diagonal_form_is_stable():
    """One step of the full update (I − ε k kᵀ) s + ε k x minimises ‖s' − s‖² + β (kᵀs' − x)²;
    the diagonal form keeps every decay 1 − ε k_n² in (0, 1], even for huge keys, and so
    every state element within the largest |x / k_n| it has seen."""
    gen = torch.Generator().manual_seed(0)
    n = 6
    s, k = torch.randn(n, generator=gen, dtype=F64), torch.randn(n, generator=gen, dtype=F64)
    x, beta = torch.randn((), generator=gen, dtype=F64), torch.tensor(0.7, dtype=F64)
    eps = beta / (1 + beta * k @ k)
    closed = s - eps * k * (k @ s) + eps * k * x
    direct = torch.linalg.solve(
        torch.eye(n, dtype=F64) + beta * torch.outer(k, k), s + beta * k * x
    )
    torch.testing.assert_close(closed, direct)

    k = torch.randn(2, 50, 4, generator=gen, dtype=F64) * 1e3
    u = torch.randn(2, 50, 3, generator=gen, dtype=F64)
    beta = torch.ones(2, 50, 3, dtype=F64) * (1 - 1e-9)
    y, h = longhorn_scan(u, beta, k, torch.ones_like(k), output_final_state=True)
    # each step is a convex combination of h_n and x / k_n (weight ε k_n² ∈ (0, 1])
    bound = (u[..., None] / k[:, :, None, :]).abs().amax(1)  # [B, D, N]
    assert torch.isfinite(y).all() and (h.abs() <= bound * (1 + 1e-9)).all()
    eps = beta / (1 + beta * k.square().sum(-1, keepdim=True))
    decay = 1 - eps[..., None] * k.square()[:, :, None, :]
    assert (decay > 0).all() and (decay <= 1).all()


def test_block_matches_reference_loop_float64():
    torch.manual_seed(0)
    m = Longhorn(16, d_state=5, expand=1).double()
    x = torch.randn(2, 71, 16, dtype=F64)
    u, z = m.in_proj(x).chunk(2, dim=-1)
    u, _ = m.conv(u)
    delta, k, q = m.x_proj(u).split([m.dt_rank, 5, 5], dim=-1)
    y, _ = longhorn_scan_loop(u, torch.sigmoid(m.beta_proj(delta)), k, q, m.D)
    torch.testing.assert_close(m(x)[0], m.out(y * F.silu(z)), rtol=1e-9, atol=1e-10)


def test_init_is_the_reference_one_and_state_size_counts_h_and_conv():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer="longhorn", d_model=64, n_layers=2, vocab_size=16))
    for block in model.blocks:
        m = block.mixer
        assert m.dt_rank == 4 and m.d_inner == 128
        torch.testing.assert_close(m.D, torch.ones(m.d_inner))
        assert torch.count_nonzero(m.beta_proj.bias) == 0  # β starts near σ(0) = ½
        for linear in (m.in_proj, m.x_proj, m.beta_proj):
            bound = linear.in_features**-0.5
            assert linear.weight.abs().max() <= bound and linear.weight.std() > 0.4 * bound
        out_bound = m.out.in_features**-0.5 / 2  # 1 / √(2 n_layers)
        assert m.out.weight.abs().max() <= out_bound * (1 + 1e-6)
    state = m.init_state(3)
    assert state.ssm.shape == (3, 128, 16) and state.conv.shape == (3, 3, 128)
    assert m.state_size(10) == 128 * 16 + 3 * 128
    assert m.mixing_flops(10) > 0


@pytest.mark.parametrize(
    "options",
    [{"d_state": 0}, {"expand": 0}, {"conv_size": -1}, {"dt_rank": 0}, {"dt_rank": "big"}],
)
def test_bad_option_is_a_config_error(options):
    with pytest.raises(ConfigError, match="longhorn"):
        Longhorn(16, **options)
    with pytest.raises(ConfigError):
        build_model(
            ModelConfig(
                mixer="longhorn", d_model=16, vocab_size=8, mixer_options={"longhorn": options}
            )
        )
