import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.mega import Mega, laplace
from seqlab.ops.ema import damped_ema
from seqlab.state import stack_states
from seqlab.testing import MIXER_INVARIANT_NAMES, check_mixer

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-10}


def mixer(**options) -> Mega:
    torch.manual_seed(0)
    m = Mega(16, ndim=4, z_dim=6, **options).double()
    m.init_weights(0.2, 0.2)
    return m


def ema_inputs(steps: int, carried: bool):
    torch.manual_seed(steps)
    u = torch.randn(2, steps, 5, dtype=F64, requires_grad=True)
    decay = (torch.rand(5, 3, dtype=F64) * 0.9 + 0.05).requires_grad_()
    gain = torch.randn(5, 3, dtype=F64, requires_grad=True)
    readout = torch.randn(5, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 5, 3, dtype=F64, requires_grad=True) if carried else None
    return u, decay, gain, readout, h0


@pytest.mark.parametrize("mode", ["chunked", "fft"])
@pytest.mark.parametrize("steps", [1, 4, 13, 29])
@pytest.mark.parametrize("carried", [False, True])
def test_ema_fast_forms_equal_the_loop_forward_and_backward_float64(mode, steps, carried):
    """Chunks of 4 over T = 1, 4, 13, 29 (a partial last chunk), from a zero or carried state:
    outputs, final state and the gradients of both with respect to every input."""
    u, decay, gain, readout, h0 = ema_inputs(steps, carried)
    inputs = [t for t in (u, decay, gain, readout, h0) if t is not None]
    weights = torch.randn(2, steps, 5, dtype=F64)
    results = {}
    for form in (mode, "recurrent"):
        y, h = damped_ema(
            u,
            decay,
            gain,
            readout,
            initial_state=h0,
            output_final_state=True,
            mode=form,
            chunk_size=4,
        )
        loss = (y * weights).sum() + (h * h).sum()
        results[form] = (y, h, torch.autograd.grad(loss, inputs))
    (y, h, grads), (y_ref, h_ref, grads_ref) = results[mode], results["recurrent"]
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **TOL)


def test_ema_chunked_form_is_exactly_causal():
    u, decay, gain, readout, _ = ema_inputs(13, False)
    y, _ = damped_ema(u, decay, gain, readout, chunk_size=4)
    (grad,) = torch.autograd.grad(y[:, 5].sum(), u)
    assert grad[:, 6:].abs().max() == 0 and grad[:, :6].abs().max() > 0


def ema_loop(ema, u: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """h_t = α β u_t + (1 − α δ) h_{t−1}, y_t = η·h_t / √N from the raw parameters; `strict`
    reads y_t = η·((1 − α δ) h_{t−1}) / √N before u_t is added (lags 1, 2, … only)."""
    alpha, delta = torch.sigmoid(ema.alpha), torch.sigmoid(ema.delta)
    h = u.new_zeros(u.shape[0], *alpha.shape)
    ys = []
    for t in range(u.shape[1]):
        if strict:
            ys.append((ema.eta * (1 - alpha * delta) * h).sum(-1) / math.sqrt(alpha.shape[1]))
        h = alpha * ema.beta * u[:, t, :, None] + (1 - alpha * delta) * h
        if not strict:
            ys.append((ema.eta * h).sum(-1) / math.sqrt(alpha.shape[1]))
    return torch.stack(ys, 1)


def reference(m: Mega, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """The Mega layer step by step: the EMA loops (the reversed one over lags 1 … T for the
    bidirectional layout), then each query's attention weights one key at a time."""
    ema = ema_loop(m.ema, x)
    if not causal:
        ema = ema + ema_loop(m.ema_reverse, x.flip(1), strict=True).flip(1)
    mixed = F.silu(ema + m.omega * x)
    v = F.silu(m.v_proj(x))
    phi, z, gamma, h_x = m.mx_proj(mixed).split([m.d_model, m.z_dim, m.v_dim, m.d_model], -1)
    z = F.silu(z)
    q = z * m.qk_scale[0] + m.qk_offset[0]
    k = z * m.qk_scale[1] + m.qk_offset[1]
    steps = x.shape[1]
    chunk = m.chunk or steps
    reach = m.relative_bias - 1
    rows = []
    for t in range(steps):
        keys = [s for s in range(steps) if s // chunk == t // chunk and (s <= t or not causal)]
        logits = []
        for s in keys:
            bias = m.rel_bias[max(-reach, min(reach, t - s)) + reach] if reach >= 0 else 0.0
            score = (q[:, t] * k[:, s]).sum(-1)
            if m.attention == "softmax":
                logits.append(score / math.sqrt(m.z_dim) + bias)
            else:
                logits.append(score / len(keys) + bias)
        if m.attention == "softmax":
            weights = torch.softmax(torch.stack(logits, -1), -1).unbind(-1)
        else:
            weights = [laplace(logit) for logit in logits]
        rows.append(sum(w[:, None] * v[:, s] for w, s in zip(weights, keys, strict=True)))
    o = torch.stack(rows, 1)
    h = F.silu(h_x + m.out(F.silu(gamma) * o))
    return torch.sigmoid(phi) * (h - x)


CASES = [
    {},
    {"chunk": 4},
    {"chunk": 1},
    {"attention": "softmax", "chunk": 5},
    {"attention": "softmax", "relative_bias": 0},
    {"relative_bias": 3, "ema_mode": "fft"},
]


@pytest.mark.parametrize("options", CASES)
def test_forward_equals_the_step_by_step_reference_forward_and_backward_float64(options):
    m = mixer(**options)
    x = torch.randn(2, 13, 16, dtype=F64, requires_grad=True)
    y, _ = m(x)
    expected = reference(m, x)
    torch.testing.assert_close(y, expected, **TOL)
    weights = torch.randn_like(y)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * weights).sum(), [x, *params], allow_unused=True)
    grads_ref = torch.autograd.grad((expected * weights).sum(), [x, *params], allow_unused=True)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        if grad_ref is None:
            assert grad is None or grad.abs().max() == 0
        else:
            torch.testing.assert_close(grad, grad_ref, **TOL)


@pytest.mark.parametrize("options", [{}, {"chunk": 4}, {"attention": "softmax", "chunk": 5}])
def test_bidirectional_layout_equals_the_two_sided_reference_float64(options):
    m = mixer(**options)
    x = torch.randn(2, 13, 16, dtype=F64)
    y, state = m(x, layout=Layout.BIDIRECTIONAL)
    torch.testing.assert_close(y, reference(m, x, causal=False), **TOL)
    assert state is None
    with pytest.raises(SeqlabError, match="without a state"):
        m(x, m.init_state(2, dtype=F64), layout=Layout.BIDIRECTIONAL)
    with pytest.raises(SeqlabError, match="causal"):
        m(x, layout=Layout.block_causal(4))


@pytest.mark.parametrize("options", CASES)
def test_token_by_token_decode_and_splits_equal_the_full_causal_forward_float64(options):
    """The EMA's scan and the cached keys and values (within the chunk) continue exactly:
    token by token, and prefills split at 3, 9 (chunk boundaries and not) from the state."""
    m = mixer(**options)
    x = torch.randn(2, 13, 16, dtype=F64)
    full, _ = m(x)
    state = m.init_state(2, dtype=F64)
    steps = []
    for t in range(13):
        y, state = m(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    state, parts = m.init_state(2, dtype=F64), []
    for lo, hi in [(0, 3), (3, 12), (12, 13)]:
        y, state = m(x[:, lo:hi], state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


def test_state_grows_without_chunks_and_holds_one_chunk_with_them():
    x = torch.randn(1, 11, 16, dtype=F64)
    grown = mixer()
    _, state = grown(x, grown.init_state(1, dtype=F64))
    assert state.kv.k.shape == (1, 11, 1, 6) and state.kv.v.shape == (1, 11, 1, 32)
    assert grown.state_kind == "kv_cache" and grown.state_size(11) == 16 * 4 + 38 * 11
    chunked = mixer(chunk=4)
    _, state = chunked(x, chunked.init_state(1, dtype=F64))
    assert chunked.state_kind == "fixed" and chunked.state_size(11) == 16 * 4 + 38 * 3
    # 11 tokens: chunk 2 holds positions 8, 9, 10
    assert state.kv.positions.tolist() == [[8, 9, 10]]
    _, state = chunked(x[:, :8], chunked.init_state(1, dtype=F64))
    assert state.kv.positions.tolist() == [[-1, -1, -1]] and state.kv.k.abs().max() == 0


def test_rows_of_different_lengths_stack_and_decode_on():
    """Growing caches of 3 and 7 tokens stacked into one batch (left-padded by KVCache, whose
    values are wider than its keys here) decode as each row would alone."""
    m = mixer()
    a, b = torch.randn(1, 4, 16, dtype=F64), torch.randn(1, 8, 16, dtype=F64)
    _, state_a = m(a[:, :3], m.init_state(1, dtype=F64))
    _, state_b = m(b[:, :7], m.init_state(1, dtype=F64))
    y, _ = m(torch.cat([a[:, 3:], b[:, 7:]]), stack_states([state_a, state_b]))
    torch.testing.assert_close(y[:1], m(a)[0][:, 3:], **TOL)
    torch.testing.assert_close(y[1:], m(b)[0][:, 7:], **TOL)


def test_laplace_is_the_gaussian_cdf_centred_at_root_half():
    assert laplace(torch.tensor(math.sqrt(0.5))) == pytest.approx(0.5)
    values = laplace(torch.linspace(-3, 3, 50, dtype=F64))
    assert (values.diff() >= 0).all() and values[0] < 1e-6 and values[-1] > 1 - 1e-6


@pytest.mark.parametrize(
    "options, message",
    [
        ({"chunk": 0}, "chunk"),
        ({"attention": "relu2"}, "attention"),
        ({"ndim": 0}, "ndim"),
        ({"z_dim": -1}, "z_dim"),
        ({"expand": 0}, "expand"),
        ({"relative_bias": -1}, "relative_bias"),
        ({"ema_mode": "direct"}, "ema_mode"),
        ({"heads": 2}, "unknown option"),
    ],
)
def test_bad_options_raise_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        Mega.from_config(ModelConfig(mixer="mega", d_model=16), **options)


def test_chunked_mega_passes_the_conformance_kit():
    """The kit with chunk 4 (a fixed-size state); the default is run by test_invariants."""
    skip = {"learns"}
    report = check_mixer("mega", chunk=4, only=[n for n in MIXER_INVARIANT_NAMES if n not in skip])
    assert report.ok, str(report)
    assert report["fixed_state_storage"].status == "pass"
    assert report["bidirectional"].status == "pass"
