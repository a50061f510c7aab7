"""The generalised delta rule (diagonal-plus-low-rank transition): chunked WY form and the
step-by-step reference.

Per batch and head, with state ``S_t`` of shape ``[K, V]``, per-channel log decay
``g_t <= 0`` (``w_t = exp(g_t)``) and low-rank vectors ``a_t, b_t`` of size K:

    S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T
        = diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = scale * S_t^T q_t

RWKV-7 (Peng et al., 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution") is the
case ``a = -κ̂``, ``b = κ̂ ⊙ a_iclr`` with a unit removal key κ̂; the delta rule is ``w = 1``,
``a = -k``, ``b = β k`` with ``k`` written as ``β k``. The ``a^T S_{t-1}`` read uses the state
before the decay of step t, as RWKV-7's kernel and fla's DPLR reference do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.ops.delta_rule import _MODES, _check_shape
from seqlab.ops.float32 import float32_kernel

__all__ = ["generalized_delta_rule", "generalized_delta_rule_reference"]

# Rows of a chunk whose pairwise decays are formed explicitly ([C, sub, sub, K] per chunk);
# farther pairs factor through the log decay just before each sub-chunk (see `_decayed_scores`).
_SUB_CHUNK = 16
# Chunks whose total log decay stays within this span factor every pair through the chunk
# start: e^{cx_t} ≤ 1 times e^{−c_s} ≤ e^{span}, far from overflow in float32 (RWKV-7's decay
# bounds the span of a 64-token chunk by 64 · e^{−1/2} ≈ 39).
_FACTOR_SPAN = 60.0


@float32_kernel
def generalized_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
    output_chunk_states: bool = False,
) -> tuple[Tensor, ...]:
    """``S_t = diag(exp(g_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T``; ``o_t = scale S_t^T q_t``
    (the readout after the update with token t).

    Args:
        q, k, a, b: ``[B, T, H, K]``.
        v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log decay per key channel, ``g <= 0``.
        scale: multiplies the readout; defaults to ``K ** -0.5`` (RWKV-7 passes 1).
        initial_state: ``[B, H, K, V]`` state before the first token; zeros if None.
        output_final_state: also return the state after the last token.
        mode: ``"chunk"`` (chunked WY form, a loop over chunks only) or ``"recurrent"`` (the
            step-by-step reference, also the decode step).
        chunk_size: tokens per chunk (any positive int); in either mode the chunk states are
            taken every ``chunk_size`` tokens.
        output_chunk_states: also return the states entering every chunk, ``S_0, S_C, ...``
            (differentiable), as block diffusion reads them.

    Returns:
        ``o`` ``[B, T, H, V]`` in q's dtype; the final state ``[B, H, K, V]`` (float32, or
        float64 for float64 inputs) or None unless ``output_final_state``; with
        ``output_chunk_states`` a third element ``[B, N, H, K, V]``, ``N = ceil(T / chunk_size)``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _check_shape("q", q, "BTHK", {})
    sizes = dict(zip("BTHK", q.shape, strict=True))
    for name, x in (("k", k), ("g", g), ("a", a), ("b", b)):
        _check_shape(name, x, "BTHK", sizes)
    _check_shape("v", v, "BTHV", sizes)
    sizes["V"] = v.shape[-1]
    if initial_state is not None:
        _check_shape("initial_state", initial_state, "BHKV", sizes)

    B, T, H, K = q.shape
    inputs = (q, k, v, g, a, b)
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    q_scaled = q.to(dtype) * (K**-0.5 if scale is None else scale)
    k, v, g, a, b = (x.to(dtype) for x in (k, v, g, a, b))
    if initial_state is None:
        state = q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    else:
        state = initial_state.to(dtype)
    if T == 0:
        o, starts = v.new_zeros(B, 0, H, v.shape[-1]), state.new_zeros(B, 0, H, K, v.shape[-1])
    elif mode == "recurrent":
        o, state, starts = _recurrent(q_scaled, k, v, g, a, b, state, chunk_size)
    else:
        o, state, starts = _chunk(q_scaled, k, v, g, a, b, state, chunk_size)
    outputs = (o.to(q.dtype), state if output_final_state else None)
    return (*outputs, starts) if output_chunk_states else outputs


def generalized_delta_rule_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    a: Tensor,
    b: Tensor,
    **options: object,
) -> tuple[Tensor, ...]:
    """The plain step-by-step form: :func:`generalized_delta_rule` with ``mode="recurrent"``
    (same arguments and returns)."""
    return generalized_delta_rule(q, k, v, g, a, b, **{**options, "mode": "recurrent"})


def _recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One update per token (q pre-scaled, state ``[B, H, K, V]``): o, the final state and the
    states entering every ``chunk_size`` tokens. Broadcasts and sums rather than matmuls, which
    cost more than the arithmetic per tiny step on CPU."""
    steps = zip(*(x.unbind(1) for x in (q, k, v, g.exp(), a, b)), strict=True)
    outputs, starts = [], []
    for t, (q_t, k_t, v_t, w_t, a_t, b_t) in enumerate(steps):
        if t % chunk_size == 0:
            starts.append(state)
        read = (a_t.unsqueeze(-1) * state).sum(-2, keepdim=True)  # a_t^T S_{t-1}: [B, H, 1, V]
        state = (
            w_t.unsqueeze(-1) * state
            + b_t.unsqueeze(-1) * read
            + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        )
        outputs.append((q_t.unsqueeze(-1) * state).sum(-2))
    return torch.stack(outputs, dim=1), state, torch.stack(starts, dim=1)


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked WY form (q pre-scaled), differentiated by autograd.

    Within a chunk from state S, with ``c_t`` the cumulative log decay through token t
    (``c_0 = 0``), ``Λ_t = diag(e^{c_t})`` and ``u_t^T = a_t^T S_{t-1}`` (the low-rank read):

        S_t = Λ_t S + Σ_{s<=t} Λ_t Λ_s^{-1} (b_s u_s^T + k_s v_s^T)
        U = Ā S + A_ab U + A_ak V,     Ā_t = a_t ⊙ e^{c_{t-1}}

    with strictly lower ``A_xy[t, s] = Σ_j x_tj y_sj e^{c_{t-1,j} - c_{s,j}}``. The UT
    transform solves ``(I - A_ab) [W, U~] = [Ā, A_ak V]`` so that ``U = W S + U~``; then

        O  = Q~ S + B_qb U~ + B_qk V,      Q~ = diag-decayed Q + B_qb W
        S' = (Λ_C + B'^T W) S + B'^T U~ + K'^T V

    with lower (diagonal included) ``B_xy[t, s] = Σ_j x_tj y_sj e^{c_{t,j} - c_{s,j}}`` and
    ``B' = diag(e^{c_C - c}) B``, ``K'`` alike (decayed to the chunk end). Only ``S'`` is
    sequential. Every exponent is a difference ``c_later - c_earlier <= 0``, so nothing
    overflows whatever the decay.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: Tensor) -> Tensor:
        """``[B, T, H, D]`` -> ``[N * B * H, C, D]`` (chunk-major), zero-padded at the end:
        padded tokens have decay 1 and no write, so they leave the state unchanged."""
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        x = x.reshape(B, N, C, H, x.shape[-1]).permute(1, 0, 3, 2, 4)
        return x.reshape(N * B * H, C, x.shape[-1])

    q, k, v, g, a, b = (chunks(x) for x in (q, k, v, g, a, b))
    c = g.cumsum(1)  # [L, C, K]
    c_before = F.pad(c[:, :-1], (0, 0, 1, 0))  # c_{t-1}
    a_ab, a_ak = _decayed_scores(a, c_before, (b, k), c, strict=True)
    b_qb, b_qk = _decayed_scores(q, c, (b, k), c, strict=False)
    rhs = torch.cat([a * c_before.exp(), a_ak @ v], dim=-1)
    # unitriangular: the solve reads only the strict lower triangle of -A_ab, i.e. I - A_ab.
    x = torch.linalg.solve_triangular(a_ab.neg(), rhs, upper=False, unitriangular=True)
    w, u = x[..., :K], x[..., K:]
    to_end = (c[:, -1:] - c).exp()
    b_end, k_end = b * to_end, k * to_end
    transition = torch.diag_embed(c[:, -1].exp()) + b_end.mT @ w  # [L, K, K]
    inflow = b_end.mT @ u + k_end.mT @ v  # [L, K, V]
    q_tilde = q * c.exp() + b_qb @ w
    intra = b_qb @ u + b_qk @ v

    rows = B * H
    state = state.reshape(rows, K, V)
    transitions = transition.view(N, rows, K, K)
    inflows = inflow.view(N, rows, K, V)
    starts = []
    for n in range(N):
        starts.append(state)
        state = torch.baddbmm(inflows[n], transitions[n], state)
    start = torch.stack(starts)  # [N, BH, K, V]
    o = torch.baddbmm(intra, q_tilde, start.view(N * rows, K, V))
    o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T]
    return o, state.view(B, H, K, V), start.view(N, B, H, K, V).transpose(0, 1)


def _decayed_scores(
    x: Tensor, cx: Tensor, ys: tuple[Tensor, ...], c: Tensor, *, strict: bool
) -> list[Tensor]:
    """For each y in ``ys`` the ``[L, C, C]`` matrix ``M[t, s] = Σ_j x_tj y_sj e^{cx_tj - c_sj}``
    on ``s < t`` (``strict``) or ``s <= t``, zero elsewhere; ``cx_t`` is ``c`` at t (or t - 1
    when strict), so every exponent used is ``<= 0``.

    Where the chunk's whole log decay is at most ``_FACTOR_SPAN``, every pair factors through
    the chunk start, ``e^{cx_t} e^{−c_s}``, and each matrix is one matmul. Otherwise rows go by
    sub-chunks of ``_SUB_CHUNK``: pairs inside a sub-chunk use the explicit decay
    tensor ``[L, c, c, K]``; for earlier columns the decay factors through ``r = c_p`` at the
    token p just before the sub-chunk, ``e^{cx_t - r} e^{r - c_s}``, both factors in (0, 1],
    and the block is one matmul.
    """
    L, C, _ = x.shape
    if float(-c[:, -1].detach().min()) <= _FACTOR_SPAN:
        keep = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(-1 if strict else 0)
        x_start = x * cx.exp()
        return [(x_start @ (y * (-c).exp()).mT).masked_fill(~keep, 0.0) for y in ys]
    blocks: list[list[Tensor]] = [[] for _ in ys]
    for i0 in range(0, C, _SUB_CHUNK):
        i1 = min(i0 + _SUB_CHUNK, C)
        n = i1 - i0
        x_i, cx_i = x[:, i0:i1], cx[:, i0:i1]
        keep = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1 if strict else 0)
        decay = (cx_i.unsqueeze(2) - c[:, None, i0:i1]).masked_fill(~keep[..., None], -torch.inf)
        weighted = x_i.unsqueeze(2) * decay.exp()  # [L, n, n, K]
        if i0:
            reference = c[:, i0 - 1 : i0]
            x_ref = x_i * (cx_i - reference).exp()
            to_ref = (reference - c[:, :i0]).exp()
        for out, y in zip(blocks, ys, strict=True):
            parts = [x_ref @ (y[:, :i0] * to_ref).mT] if i0 else []
            parts.append((weighted * y[:, None, i0:i1]).sum(-1))
            parts.append(x.new_zeros(L, n, C - i1))
            out.append(torch.cat(parts, dim=-1))
    return [torch.cat(rows, dim=1) for rows in blocks]
