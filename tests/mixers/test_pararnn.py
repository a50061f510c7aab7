"""ParaGRU and ParaLSTM: Newton's parallel solve against the same cell run step by step."""

from __future__ import annotations

import pytest
import torch

from seqlab.auxiliary import recorded_metrics
from seqlab.errors import ConfigError
from seqlab.mixers.fused_rnn import RNNState
from seqlab.mixers.pararnn import ParaGRU, ParaLSTM, ParaRNN

F64 = torch.float64
PAPER_ITERATIONS = 3  # Danieli et al. (2025) run three Newton iterations


def _mixer(cls: type[ParaRNN], std: float = 0.3, **options) -> ParaRNN:
    torch.manual_seed(0)
    m = cls(8, expand=1, **options).double()
    m.init_weights(std, std)
    return m


def _state(m: ParaRNN, batch: int) -> RNNState:
    """The state after a prefill of 5 random tokens (run step by step)."""
    mode, m.mode = m.mode, "sequential"
    with torch.no_grad():
        _, state = m(torch.randn(batch, 5, 8, dtype=F64), m.init_state(batch, dtype=F64))
    m.mode = mode
    return state


def _run(m: ParaRNN, mode: str, x: torch.Tensor, state: RNNState | None):
    m.mode = mode
    y, new_state = m(x, state)
    return y, new_state


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
@pytest.mark.parametrize("steps", [13, 37])
@pytest.mark.parametrize("with_state", [False, True])
def test_newton_equals_the_sequential_cell_within_the_papers_iterations_float64(
    cls, steps, with_state
):
    """The kit's weight scale (std 0.1); tol 1e-30 forces exactly three iterations, which
    warns that the tolerance was not met."""
    m = _mixer(cls, std=0.1, max_iter=PAPER_ITERATIONS, tol=1e-30)
    x = torch.randn(2, steps, 8, dtype=F64)
    state = _state(m, 2) if with_state else None
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="did not converge in 3"):
        y_ref, s_ref = _run(m, "sequential", x, state)
        y, s = _run(m, "newton", x, state)
    assert m.newton_info.iterations == PAPER_ITERATIONS
    assert m.newton_info.residual < 1e-6
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    if with_state:
        torch.testing.assert_close(s.h, s_ref.h, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
@pytest.mark.parametrize("with_state", [False, True])
def test_newton_gradients_equal_the_sequential_loops_float64(cls, with_state):
    m = _mixer(cls)
    x = torch.randn(2, 13, 8, dtype=F64)
    weight = torch.randn(2, 13, 8, dtype=F64)
    start = _state(m, 2) if with_state else None
    results = []
    for mode in ("sequential", "newton"):
        leaf = x.clone().requires_grad_()
        leaves, state = [leaf, *m.parameters()], None
        if start is not None:
            h, c = (None if t is None else t.clone().requires_grad_() for t in (start.h, start.c))
            state = RNNState(h, c)
            leaves += [t for t in (h, c) if t is not None]
        y, _ = _run(m, mode, leaf, state)
        results.append((y.detach(), torch.autograd.grad((y * weight).sum(), leaves)))
    (y_ref, grads_ref), (y, grads) = results
    assert m.newton_info.converged
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
def test_cell_jacobian_equals_autograds(cls):
    m = _mixer(cls)
    shape = (1, 1, m.hidden, 2) if isinstance(m, ParaLSTM) else (1, 1, m.hidden)
    s_prev = torch.randn(shape, dtype=F64)
    u = torch.randn(1, 1, m.gates, m.hidden, dtype=F64)
    _, jac = m._cell(s_prev, (u,), True)
    full = torch.autograd.functional.jacobian(lambda s: m._cell(s, (u,), False)[0], s_prev)
    full = full.reshape(s_prev.numel(), s_prev.numel())
    if isinstance(m, ParaLSTM):  # channel k's block sits at rows/cols 2k, 2k+1
        blocks = [full[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] for k in range(m.hidden)]
        expected = torch.stack(blocks)
        torch.testing.assert_close(jac[0, 0], expected)
    else:
        torch.testing.assert_close(jac[0, 0], full.diagonal())
        torch.testing.assert_close(full, torch.diag(full.diagonal()))


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
def test_non_convergence_is_reported_and_warned(cls):
    m = _mixer(cls, max_iter=1)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations"):
        m(torch.randn(1, 64, 8, dtype=F64))
    assert m.newton_info.iterations == 1 and not m.newton_info.converged
    assert m.newton_info.residual > m.newton_info.tol
    assert recorded_metrics(m) == {"newton_unconverged": 1.0}
    m.max_iter = 20
    m(torch.randn(1, 64, 8, dtype=F64))
    assert recorded_metrics(m) == {"newton_unconverged": 0.0}


@pytest.mark.parametrize(
    ("options", "match"),
    [({"mode": "jacobi"}, "mode"), ({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol")],
)
def test_bad_options_raise_config_error(options, match):
    with pytest.raises(ConfigError, match=match):
        ParaGRU(8, **options)
