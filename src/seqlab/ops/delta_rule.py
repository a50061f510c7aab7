"""Delta rule and gated delta rule: chunked WY (UT-transform) form and step-by-step reference.

Per batch and head, with state ``S_t`` of shape ``[K, V]``, log decay ``g_t <= 0`` and
write strength ``beta_t`` (in ``[0, 2]`` for the negative-eigenvalue variant):

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = scale * S_t^T q_t

The plain delta rule is the ``g = 0`` case. References: Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length"; Yang et al. 2024, "Gated Delta Networks".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.ops.backend import fla_delta_rule, use_fla
from seqlab.ops.float32 import float32_kernel

__all__ = ["delta_rule", "gated_delta_rule"]

_MODES = ("chunk", "recurrent")


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
    output_chunk_states: bool = False,
) -> tuple[Tensor, ...]:
    """Delta rule: ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``.

    The readout is ``o_t = scale * S_t^T q_t``, read after the update with token t.

    Args:
        q, k: ``[B, T, H, K]``. Keys are used as given (callers L2-normalise them).
        v: ``[B, T, H, V]``.
        beta: ``[B, T, H]`` write strength, not clamped (``[0, 2]`` allows negative eigenvalues).
        scale: multiplies the readout; defaults to ``K ** -0.5``.
        initial_state: ``[B, H, K, V]`` state before the first token; zeros if None.
        output_final_state: also return the state after the last token.
        mode: ``"chunk"`` (chunked WY form) or ``"recurrent"`` (step-by-step reference).
        chunk_size: tokens per chunk in chunk mode.
        output_chunk_states: also return the states entering every ``chunk_size`` tokens,
            ``S_0, S_C, S_2C, ...`` (differentiable, in either mode): block diffusion reads
            the state at every block boundary from this one call.

    Returns:
        ``o`` of shape ``[B, T, H, V]`` in q's dtype, and the final state ``[B, H, K, V]``
        (float32, or float64 for float64 inputs) or None unless ``output_final_state``; with
        ``output_chunk_states`` a third element, the chunk states ``[B, N, H, K, V]``,
        ``N = ceil(T / chunk_size)``.

    With `ops.backend: fla` (`seqlab.ops.backend`) chunk mode runs flash-linear-attention's
    kernel with these conventions.
    """
    options = (scale, initial_state, output_final_state, mode, chunk_size, output_chunk_states)
    return _run(q, k, v, None, beta, *options)


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
    output_chunk_states: bool = False,
) -> tuple[Tensor, ...]:
    """Gated delta rule: ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``.

    The readout is ``o_t = scale * S_t^T q_t``. Arguments and returns are those of
    :func:`delta_rule`, plus ``g`` of shape ``[B, T, H]``: the per-head log decay, ``g <= 0``.
    """
    options = (scale, initial_state, output_final_state, mode, chunk_size, output_chunk_states)
    return _run(q, k, v, g, beta, *options)


def _run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    output_final_state: bool,
    mode: str,
    chunk_size: int,
    output_chunk_states: bool,
) -> tuple[Tensor, ...]:
    """Validate, then run flash-linear-attention's kernel (`ops.backend: fla`, which takes
    half-precision inputs itself) or seqlab's, in float32 under autocast (g None: no decay)."""
    _check_inputs(q, k, v, g, beta, initial_state, mode, chunk_size)
    if use_fla(mode, output_chunk_states, q.shape[1]):
        return fla_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)
    return _torch_run(
        q, k, v, g, beta, scale, initial_state, output_final_state, mode, chunk_size,
        output_chunk_states,
    )  # fmt: skip


@float32_kernel
def _torch_run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    output_final_state: bool,
    mode: str,
    chunk_size: int,
    output_chunk_states: bool,
) -> tuple[Tensor, ...]:
    """Promote to the state dtype and run the chosen mode."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    inputs = [x for x in (q, k, v, g, beta) if x is not None]
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    q_scaled = q.to(dtype) * (K**-0.5 if scale is None else scale)
    k, v, beta = (x.to(dtype) for x in (k, v, beta))
    g = None if g is None else g.to(dtype)
    need_states = output_final_state or output_chunk_states
    light = mode == "chunk" and not need_states and chunk_size >= T > 0
    if initial_state is not None:
        state = initial_state.to(dtype)
    elif light:
        state = None  # zeros that the one-chunk form never reads (see `_chunk`)
    else:
        state = q.new_zeros(B, H, K, V, dtype=dtype)
    if T == 0:
        o, starts = q_scaled.new_zeros(B, 0, H, V), state.new_zeros(B, 0, H, K, V)
    elif mode == "recurrent":
        decay = torch.zeros_like(beta) if g is None else g
        o, state, starts = _recurrent(q_scaled, k, v, decay, beta, state, chunk_size)
    else:
        o, state, starts = _chunk(q_scaled, k, v, g, beta, state, chunk_size, light)
    outputs = (o.to(q.dtype), state if output_final_state else None)
    return (*outputs, starts) if output_chunk_states else outputs


def _recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference: one state update per token. q is pre-scaled; state ``[B, H, K, V]``.
    Returns o, the final state and the states entering every ``chunk_size`` tokens.

    Products are broadcasts and sums rather than matmuls: on CPU a threaded BLAS call per tiny
    step costs more than the arithmetic.
    """
    steps = zip(*(x.unbind(1) for x in (q, k, v, beta, g.exp())), strict=True)
    outputs, starts = [], []
    for t, (q_t, k_t, v_t, beta_t, decay_t) in enumerate(steps):
        if t % chunk_size == 0:
            starts.append(state)
        k_t = k_t.unsqueeze(-1)  # [B, H, K, 1]
        beta_t, decay_t = beta_t[..., None, None], decay_t[..., None, None]
        recalled = (k_t * state).sum(-2, keepdim=True)  # k_t^T S_{t-1}: [B, H, 1, V]
        state = decay_t * (state - beta_t * k_t * recalled) + beta_t * k_t * v_t.unsqueeze(-2)
        outputs.append((q_t.unsqueeze(-1) * state).sum(-2))
    return torch.stack(outputs, dim=1), state, torch.stack(starts, dim=1)


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    state: Tensor | None,
    chunk_size: int,
    light: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Chunked WY form on ``[B, T, H, *]`` inputs (q pre-scaled, ``g`` None for no decay).

    Pads time to whole chunks, runs :class:`_ChunkedDeltaRule` on ``[N * B * H, C, *]`` rows,
    and returns ``o`` as ``[B, T, H, V]``, the final state and the chunk states
    ``[B, N, H, K, V]``. ``light``: one chunk whose states are not wanted (both come back
    None); a None ``state`` then stands for zeros.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: Tensor) -> Tensor:
        """``[B, T, H, *D]`` -> ``[N * B * H, C, *D]``, zero-padded at the end of time."""
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad))
        x = x.reshape(B, N, C, H, *x.shape[3:]).transpose(2, 3).transpose(0, 1)
        return x.reshape(N * B * H, C, *x.shape[4:])

    gate = None if g is None else chunks(g)
    start = None if state is None else state.reshape(B * H, K, V)
    o, state, starts = _ChunkedDeltaRule.apply(
        chunks(q), chunks(k), chunks(v), gate, chunks(beta), start, N, light
    )
    o = o.reshape(N, B, H, C, V).transpose(0, 1).transpose(2, 3).reshape(B, N * C, H, V)
    if light:
        return o[:, :T], None, None
    starts = starts.view(N, B, H, K, V).transpose(0, 1)
    return o[:, :T], state.reshape(B, H, K, V), starts


class _ChunkedDeltaRule(torch.autograd.Function):
    """The chunked WY form with a hand-written backward.

    Rows are chunks: inputs ``[L, C, *]`` with ``L = N * B * H`` ordered chunk-major, so that
    chunk n of every (batch, head) is the slice ``[n * BH, (n + 1) * BH)``; ``g`` is None for
    the plain delta rule. Within a chunk starting from state ``S``, with ``c_t`` the cumulative
    log decay inside the chunk, ``D_ts = e^{c_t - c_s}`` for ``s <= t`` (else 0) and
    ``A = strict_lower(diag(beta) K K^T * D)``, the UT transform solves

        (I + A) X = R = [diag(beta) V, diag(beta e^c) K],     X = [U~, W]

    for all chunks at once; the true pseudo-values are ``U = U~ - W S``. With ``K' =
    diag(e^{c_C - c}) K`` (keys decayed to the chunk end) and ``M = Q K^T * D``:

        S' = T S + K'^T U~,        T = e^{c_C} I - K'^T W
        O  = M U~ + Q~ S,          Q~ = diag(e^c) Q - M W

    so that only ``S' = T S + K'^T U~`` is sequential. Outputs o ``[L, C, V]``, the final
    state and the chunk-start states ``S`` (``[L, K, V]``). The backward runs the adjoint of that
    recursion in reverse, ``dS = T^T dS' + Q~^T dO``, then differentiates every batched product
    by hand (no autograd graph of the many broadcasts); double backward is not supported.

    ``light`` (one chunk, no state outputs: the block layouts' short scans) forms neither T
    nor K'^T U~: O = M U~ + Q~ S, or O = M U~ when ``state`` is None (zeros).
    """

    @staticmethod
    def forward(ctx, q, k, v, g, beta, state, n_chunks, light):  # noqa: ANN001, ANN205
        ctx.set_materialize_grads(False)
        ctx.light = light
        L, C, K = q.shape
        V = v.shape[-1]
        kk = k @ k.mT
        a = kk * beta.unsqueeze(-1)  # only its strict lower triangle is ever read
        m = q @ k.mT
        if g is None:
            rhs = torch.cat([beta.unsqueeze(-1) * v, beta.unsqueeze(-1) * k], dim=-1)
            k_end, q_decayed, end_decay = k, q, None
            m.tril_()
            gate_saved: tuple[Tensor, ...] = ()
        else:
            c = g.cumsum(-1)
            decay_in = c.exp()
            upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
            d = (c.unsqueeze(-1) - c.unsqueeze(-2)).masked_fill_(upper, float("-inf")).exp_()
            a.mul_(d)
            m.mul_(d)
            rhs = torch.cat([beta.unsqueeze(-1) * v, (beta * decay_in).unsqueeze(-1) * k], dim=-1)
            end_decay = c[:, -1].exp()  # [L]
            to_end = (c[:, -1:] - c).exp()
            k_end = to_end.unsqueeze(-1) * k
            q_decayed = decay_in.unsqueeze(-1) * q
            gate_saved = (decay_in, d, end_decay, q_decayed, to_end)
        # Solved as X^T (I + A)^T = R^T: the transposed views are already in LAPACK's
        # column-major order, which makes this about twice as fast on CPU as the left solve.
        x = torch.linalg.solve_triangular(
            a.mT, rhs.mT, upper=True, left=False, unitriangular=True
        ).mT
        ctx.gated = g is not None
        if light:
            q_tilde = None
            if state is None:
                o = m @ x[..., :V]
            else:
                mx = m @ x
                q_tilde = q_decayed - mx[..., V:]
                o = torch.baddbmm(mx[..., :V], q_tilde, state)
            ctx.save_for_backward(
                q, k, v, beta, kk, a, x, m, None, q_tilde, None, state, *gate_saved
            )
            return o, None, None
        kx = k_end.mT @ x  # [L, K, V + K] = [K'^T U~, K'^T W]
        transition = kx[..., V:].neg()
        transition.diagonal(dim1=-2, dim2=-1).add_(
            1.0 if end_decay is None else end_decay.unsqueeze(-1)
        )
        mx = m @ x
        q_tilde = q_decayed - mx[..., V:]

        rows = L // n_chunks
        starts = q.new_empty(n_chunks, rows, K, V)
        transitions = transition.view(n_chunks, rows, K, K)
        inflows = kx[..., :V].unflatten(0, (n_chunks, rows))
        for n in range(n_chunks):
            starts[n] = state
            state = torch.baddbmm(inflows[n], transitions[n], state)
        starts = starts.view(L, K, V)
        o = torch.baddbmm(mx[..., :V], q_tilde, starts)

        ctx.n_chunks = n_chunks
        ctx.save_for_backward(
            q, k, v, beta, kk, a, x, m, k_end, q_tilde, transition, starts, *gate_saved
        )
        return o, state, starts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o, d_final, d_starts):  # noqa: ANN001, ANN205 - autograd API
        q, k, v, beta, kk, a, x, m, k_end, q_tilde, transition, starts, *gate_saved = (
            ctx.saved_tensors
        )
        gated = ctx.gated
        L, C, K = q.shape
        V = v.shape[-1]
        if d_o is None:
            d_o = q.new_zeros(L, C, V)
        if ctx.light:
            d_m, d_x, d_q_tilde, d_state = _light_gradients(d_o, x, m, q_tilde, starts)
            d_k_end = d_transition = None
        else:
            d_m, d_x, d_k_end, d_q_tilde, d_transition, d_state = _chunk_gradients(
                ctx.n_chunks, d_o, d_final, d_starts, x, m, k_end, q_tilde, transition, starts
            )

        # X = (I + A)^{-1} R: dR = (I + A)^{-T} dX, dA = -dR X^T on the strict lower triangle.
        d_rhs = torch.linalg.solve_triangular(
            a, d_x.mT, upper=False, left=False, unitriangular=True
        ).mT
        d_a = (d_rhs @ x.mT).neg_().tril_(-1)
        d_rhs_v, d_rhs_k = d_rhs[..., :V], d_rhs[..., V:]

        d_v = beta.unsqueeze(-1) * d_rhs_v
        if gated:
            decay_in, d, end_decay, q_decayed, to_end = gate_saved
            d_a.mul_(d)
            d_qk = d_m * d
            write = beta * decay_in
        else:
            d_qk = d_m.tril()
            write = beta
        d_beta = (d_rhs_v * v).sum(-1) + (d_a * kk).sum(-1)
        d_rhs_k_dot_k = (d_rhs_k * k).sum(-1)
        d_kk = beta.unsqueeze(-1) * d_a
        d_k = torch.baddbmm(write.unsqueeze(-1) * d_rhs_k, d_kk + d_kk.mT, k)
        d_k.baddbmm_(d_qk.mT, q)
        d_q = d_qk @ k
        if not gated:
            d_beta += d_rhs_k_dot_k
            if d_k_end is not None:
                d_k += d_k_end
            if d_q_tilde is not None:
                d_q += d_q_tilde
            return d_q, d_k, d_v, None, d_beta, d_state, None, None

        d_beta += decay_in * d_rhs_k_dot_k
        # Gradient of the cumulative log decay c: through R's keys, diag(e^c) Q, K' and D.
        d_c = write * d_rhs_k_dot_k
        d_log_d = d_kk * kk + d_m * m  # gradient of log D_ts = c_t - c_s
        d_c += d_log_d.sum(-1) - d_log_d.sum(-2)
        if d_q_tilde is not None:
            d_q.addcmul_(decay_in.unsqueeze(-1), d_q_tilde)
            d_c += (d_q_tilde * q_decayed).sum(-1)
        if d_k_end is not None:
            d_k.addcmul_(to_end.unsqueeze(-1), d_k_end)
            d_to_end = (d_k_end * k_end).sum(-1)  # gradient of (c_C - c_t)
            d_c -= d_to_end
            trace = d_transition.diagonal(dim1=-2, dim2=-1).sum(-1)
            d_c[:, -1] += d_to_end.sum(-1) + end_decay * trace
        d_g = d_c.flip(-1).cumsum(-1).flip(-1)
        return d_q, d_k, d_v, d_g, d_beta, d_state, None, None


def _chunk_gradients(
    n_chunks: int,
    d_o: Tensor,
    d_final: Tensor | None,
    d_starts: Tensor | None,
    x: Tensor,
    m: Tensor,
    k_end: Tensor,
    q_tilde: Tensor,
    transition: Tensor,
    starts: Tensor,
) -> tuple[Tensor, ...]:
    """``_ChunkedDeltaRule``'s backward up to the UT solve: the adjoint state recursion, then
    the gradients of M, X, K', Q~ and T, and of the initial state."""
    L, C, V = d_o.shape
    K = x.shape[-1] - V
    rows = L // n_chunks
    d_state = d_o.new_zeros(rows, K, V) if d_final is None else d_final.contiguous()
    # Adjoint of S' = T S + inflow: d_end[n] is the gradient of chunk n's end state.
    inflow_grad = q_tilde.mT @ d_o
    if d_starts is not None:
        inflow_grad += d_starts
    inflow_grad = inflow_grad.view(n_chunks, rows, K, V)
    d_end = d_o.new_empty(n_chunks, rows, K, V)
    transition_t = transition.mT.view(n_chunks, rows, K, K)
    for n in range(n_chunks - 1, -1, -1):
        d_end[n] = d_state
        d_state = torch.baddbmm(inflow_grad[n], transition_t[n], d_state)
    d_end = d_end.view(L, K, V)

    d_transition = d_end @ starts.mT  # [L, K, K]
    d_q_tilde = d_o @ starts.mT  # [L, C, K]
    d_mx = torch.cat([d_o, d_q_tilde.neg()], dim=-1)  # gradient of M X
    d_kx = torch.cat([d_end, d_transition.neg()], dim=-1)  # gradient of K'^T X
    d_m = d_mx @ x.mT
    d_x = torch.baddbmm(m.mT @ d_mx, k_end, d_kx)
    d_k_end = x @ d_kx.mT
    return d_m, d_x, d_k_end, d_q_tilde, d_transition, d_state


def _light_gradients(
    d_o: Tensor, x: Tensor, m: Tensor, q_tilde: Tensor | None, start: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The same for one chunk without state outputs, O = M U~ + Q~ S (S None: zeros)."""
    V = d_o.shape[-1]
    if start is None:
        d_x = torch.cat([m.mT @ d_o, torch.zeros_like(x[..., V:])], dim=-1)
        return d_o @ x[..., :V].mT, d_x, None, None
    d_q_tilde = d_o @ start.mT
    d_mx = torch.cat([d_o, d_q_tilde.neg()], dim=-1)
    return d_mx @ x.mT, m.mT @ d_mx, d_q_tilde, q_tilde.mT @ d_o


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    initial_state: Tensor | None,
    mode: str,
    chunk_size: int,
) -> None:
    """Raise ValueError on unknown mode, bad chunk size or shapes that disagree with q and v."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _check_shape("q", q, "BTHK", {})
    sizes = dict(zip("BTHK", q.shape, strict=True))
    _check_shape("k", k, "BTHK", sizes)
    _check_shape("v", v, "BTHV", sizes)
    sizes["V"] = v.shape[-1]
    _check_shape("beta", beta, "BTH", sizes)
    if g is not None:
        _check_shape("g", g, "BTH", sizes)
    if initial_state is not None:
        _check_shape("initial_state", initial_state, "BHKV", sizes)


def _check_shape(name: str, x: Tensor, dims: str, sizes: dict[str, int]) -> None:
    """Raise unless ``x`` has one axis per letter of ``dims``, matching the sizes already known."""
    expected = [sizes.get(d) for d in dims]
    actual = tuple(x.shape)
    if len(actual) != len(dims) or any(
        e not in (None, n) for e, n in zip(expected, actual, strict=True)
    ):
        want = ", ".join(d if e is None else str(e) for d, e in zip(dims, expected, strict=True))
        raise ValueError(f"{name} must have shape [{', '.join(dims)}] = ({want}), got {actual}")
