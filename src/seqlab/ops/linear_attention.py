"""Gated linear attention: chunked parallel form and its step-by-step recurrent reference.

Per batch element and head, with S_0 the initial state (zeros by default):

    S_t = diag(exp g_t) S_{t-1} + k_t v_tᵀ        S_t: [K, V]
    o_t = scale · S_tᵀ q_t                          o_t: [V]

g is the log decay (≤ 0): per key ``[B,T,H,K]`` (GLA), one scalar per head ``[B,T,H]``
(RetNet, Mamba2/SSD) or ``None`` (plain linear attention, no decay).

Unrolled, with G_t = Σ_{r≤t} g_r (per key):

    o_t = scale · Σ_{s≤t} (q_t ⊙ exp(G_t − G_s))ᵀ k_s · v_s + scale · (q_t ⊙ exp(G_t))ᵀ S_0

``mode="chunk"`` evaluates this per chunk of C tokens: a causal [C, C] score matrix for all
chunks at once (batched matmuls), plus the state entering each chunk, carried by a loop over
chunks. Cumulative decays restart at every chunk and every exponent is a difference
G_t − G_s with s ≤ t, hence ≤ 0, so strong decay underflows instead of overflowing. Scalar
decay needs one [C, C] decay matrix per head and chunk; per-key decay uses a recursive-halving
tiling of the causal triangle (log2 C matmuls per chunk, no [C, C, K] tensor). The backward
pass is written by hand (first-order only) and recomputes the per-key tiles rather than
storing them: saved memory per head is O(T·(C + K + V) + T·K·V / C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqlab.ops.backend import fla_linear_attention, use_fla
from seqlab.ops.float32 import float32_kernel

__all__ = ["gated_linear_attention"]

_MODES = ("chunk", "recurrent")


def gated_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
    output_chunk_states: bool = False,
) -> tuple[Tensor, ...]:
    """Gated linear attention ``S_t = diag(exp g_t) S_{t-1} + k_t v_tᵀ``, ``o_t = scale·S_tᵀ q_t``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: log decay (≤ 0) applied before adding token t: ``[B, T, H, K]`` (per key),
            ``[B, T, H]`` (one scalar per head) or ``None`` (no decay).
        scale: query scale, default ``K ** -0.5``.
        initial_state: ``S_0`` of shape ``[B, H, K, V]``, default zeros.
        output_final_state: also return ``S_T``.
        mode: ``"chunk"`` (parallel within chunks, recurrent across chunks; first-order
            gradients only) or ``"recurrent"`` (a plain loop over time steps; the reference).
        chunk_size: chunk length for ``mode="chunk"``, a positive power of two.
        output_chunk_states: also return the states entering every ``chunk_size`` tokens,
            ``S_0, S_C, S_2C, ...`` (differentiable, in either mode): block diffusion reads
            the state at every block boundary from this one call.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in q's dtype; ``final_state`` is ``S_T``
        of shape ``[B, H, K, V]`` in float32 (float64 for float64 inputs), or ``None`` unless
        ``output_final_state``. Computation runs in that state dtype. With
        ``output_chunk_states`` a third element, the chunk states ``[B, N, H, K, V]`` in the
        state dtype, ``N = ceil(T / chunk_size)``.

    With `ops.backend: fla` (`seqlab.ops.backend`) chunk mode runs flash-linear-attention's
    kernel with these conventions.

    Raises:
        ValueError: on an unknown mode, a chunk_size that is not a power of two, or inputs
            whose shapes do not match (the message names the expected shape).
    """
    _check_inputs(q, k, v, g, initial_state, mode, chunk_size)
    if use_fla(mode, output_chunk_states, q.shape[1]):  # half-precision inputs taken as they are
        return fla_linear_attention(q, k, v, g, scale, initial_state, output_final_state)
    return _torch_linear_attention(
        q, k, v, g, scale, initial_state, output_final_state, mode, chunk_size,
        output_chunk_states,
    )  # fmt: skip


@float32_kernel
def _torch_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    scale: float | None,
    initial_state: Tensor | None,
    output_final_state: bool,
    mode: str,
    chunk_size: int,
    output_chunk_states: bool,
) -> tuple[Tensor, ...]:
    """seqlab's kernel (`gated_linear_attention` without the checks), float32 under autocast."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    inputs = (q, k, v) if g is None else (q, k, v, g)
    acc = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    scale = K**-0.5 if scale is None else scale
    need_states = output_final_state or output_chunk_states
    light = mode == "chunk" and not need_states and chunk_size >= T > 0
    if initial_state is not None:
        state = initial_state.to(acc)
    elif light:
        state = None  # zeros that the one-chunk form never reads (see `_chunked`)
    else:
        state = torch.zeros(B, H, K, V, dtype=acc, device=q.device)
    args = (q.to(acc) * scale, k.to(acc), v.to(acc), None if g is None else g.to(acc), state)

    if T == 0:
        o, state, starts = q.new_zeros(B, 0, H, V), state.clone(), state.new_zeros(B, 0, H, K, V)
    elif mode == "recurrent":
        o, state, starts = _recurrent(*args, chunk_size)
    else:
        o, state, starts = _chunked(*args, chunk_size, light)
    outputs = (o.to(q.dtype), state if output_final_state else None)
    return (*outputs, starts) if output_chunk_states else outputs


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    mode: str,
    chunk_size: int,
) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B,T,H,K] (4 dims), got {_fmt(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have shape [B,T,H,K]={_fmt(q.shape)}, got {_fmt(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B,T,H,V]=({B},{T},{H},V), got {_fmt(v.shape)}")
    if g is not None and g.shape not in ((B, T, H, K), (B, T, H)):
        raise ValueError(
            f"g must have shape [B,T,H,K]={_fmt((B, T, H, K))} or [B,T,H]={_fmt((B, T, H))}, "
            f"got {_fmt(g.shape)}"
        )
    state_shape = (B, H, K, v.shape[-1])
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(
            f"initial_state must have shape [B,H,K,V]={_fmt(state_shape)}, "
            f"got {_fmt(initial_state.shape)}"
        )


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return f"({','.join(map(str, shape))})"


def _recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, state: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Step-by-step reference; q is pre-scaled, all inputs ``[B,T,H,*]``, state ``[B,H,K,V]``.

    Returns o, the final state and the states entering every ``chunk_size`` tokens.
    """
    if g is None:
        decay = None
    elif g.dim() == 3:
        decay = g.exp()[..., None, None]
    else:
        decay = g.exp()[..., None]
    # unbind, not q[:, t]: each indexing op's backward would materialise a full [B,T,...] grad.
    decays = [None] * q.shape[1] if decay is None else decay.unbind(1)
    outputs, starts = [], []
    steps = zip(q.unbind(1), k.unbind(1), v.unbind(1), decays, strict=True)
    for t, (q_t, k_t, v_t, decay_t) in enumerate(steps):
        if t % chunk_size == 0:
            starts.append(state)
        kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        state = kv + (state if decay_t is None else state * decay_t)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, state))
    return torch.stack(outputs, dim=1), state, torch.stack(starts, dim=1)


def _to_chunks(x: Tensor, chunk: int) -> Tensor:
    """``[B, T, H, D]`` → contiguous ``[B, H, N, chunk, D]``, zero-padding T up to ``N·chunk``."""
    B, T, H, D = x.shape
    n = -(-T // chunk)
    x = x.transpose(1, 2)
    if n * chunk > T:
        x = F.pad(x, (0, 0, 0, n * chunk - T))
    return x.reshape(B, H, n, chunk, D).contiguous()


def _chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    state: Tensor | None,
    chunk_size: int,
    light: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Chunked form; q is pre-scaled, inputs ``[B,T,H,*]``, state ``[B,H,K,V]``.

    Returns o, the final state and the states entering each chunk ``[B,N,H,K,V]`` (with
    T ≤ chunk_size, one chunk of the next power of two ≥ T). Padding (k = v = 0, g = 0)
    after the last token leaves the final state unchanged.

    ``light``: a sequence of one chunk whose states are not wanted skips the state update
    ``kᵀv`` altogether, and the read of the start state too when it is zero (``state`` None,
    only allowed then): the many short sequences of the block layouts (every block scanned
    from its own start) cost what their intra-chunk products cost. The states are None then.
    """
    T = q.shape[1]
    chunk = min(chunk_size, 1 << (T - 1).bit_length())
    q, k, v = (_to_chunks(x, chunk) for x in (q, k, v))
    G = None
    if g is not None:
        G = _to_chunks(g if g.dim() == 4 else g.unsqueeze(-1), chunk).cumsum(-2)
    o, state, entering = _ChunkedGLA.apply(q, k, v, G, state, light)
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)
    return o, state, None if entering is None else entering.transpose(1, 2)


class _ChunkedGLA(torch.autograd.Function):
    """Chunked gated linear attention with a hand-written backward.

    Inputs per chunk n (leading dims ``[B, H, N]``): q, k ``[C, K]`` (q pre-scaled), v ``[C, V]``,
    G ``[C, K]`` (per-key) or ``[C, 1]`` (scalar) cumulative log decay restarted at the chunk
    start (so G ≤ 0), or None; S_0 ``[B, H, K, V]``. With A the causal intra-chunk scores
    ``A_ts = Σ_k q_tk k_sk exp(G_tk − G_sk)`` (s ≤ t):

        o_n = A v + (q ⊙ exp G) E_n,      E_n = S_{n-1} (the state entering chunk n)
        S_n = diag(exp G_C) S_{n-1} + (k ⊙ exp(G_C − G))ᵀ v

    Outputs o ``[B, H, N, C, V]``, S_N ``[B, H, K, V]`` and the entering states E
    ``[B, H, N, K, V]``. With ``light`` (one chunk, states not wanted) S_1 is not formed
    and both state outputs are None, and a None S_0 stands for zeros: o = A v.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        G: Tensor | None,
        state: Tensor | None,
        light: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        ctx.set_materialize_grads(False)
        ctx.light = light
        A = _intra_scores(q, k, G)
        o = A @ v
        exp_G = None if G is None else _exp_decay_(G.clone())
        if light:  # no k_out, no scan: only the read of a given start state
            entering = None if state is None else state.unsqueeze(2)
            if entering is not None:
                o += (q if exp_G is None else q * exp_G) @ entering
            ctx.save_for_backward(q, k, v, G, A, entering, exp_G, None)
            return o, None, None
        exp_G_to_end = None if G is None else _exp_decay_(G[..., -1:, :] - G)
        q_in, k_out, decay = _inter_operands(q, k, exp_G, exp_G_to_end)
        entering, state = _scan(k_out.mT @ v, decay, state)
        o += q_in @ entering
        ctx.save_for_backward(q, k, v, G, A, entering, exp_G, exp_G_to_end)
        return o, state, entering

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        d_o: Tensor | None,
        d_state: Tensor | None,
        d_entering: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        q, k, v, G, A, entering, exp_G, exp_G_to_end = ctx.saved_tensors
        d_o = torch.zeros_like(v) if d_o is None else d_o.contiguous()
        if ctx.light:
            return _light_backward(d_o, q, k, v, G, A, entering, exp_G, ctx.needs_input_grad[3])
        d_state = torch.zeros_like(entering[:, :, 0]) if d_state is None else d_state
        q_in, k_out, decay = _inter_operands(q, k, exp_G, exp_G_to_end)
        d_in = q_in.mT @ d_o
        if d_entering is not None:
            d_in += d_entering
        d_chunk_kv, d_state = _scan_backward(d_in, d_state, decay)
        dv = A.mT @ d_o
        dv += k_out @ d_chunk_kv
        dq = d_o @ entering.mT  # gradient of q_in
        dk = v @ d_chunk_kv.mT  # gradient of k_out
        if G is not None:
            via_chunk_end = (dk * k_out).sum(-2, keepdim=True)
            dq *= exp_G
            dk *= exp_G_to_end
        _intra_scores_backward(d_o @ v.mT, q, k, G, dq, dk)
        if G is None or not ctx.needs_input_grad[3]:
            return dq, dk, dv, None, d_state, None
        # Every use of G_t (other than as the chunk end) is through q_t ⊙ exp(G_t) or
        # k_t ⊙ exp(−G_t), and the halving reference points cancel, so ∂/∂G = q ⊙ dq − k ⊙ dk.
        dG = q * dq - k * dk
        dG[..., -1:, :] += via_chunk_end
        dG = dG.sum_to_size(G.shape)
        d_decay = (d_chunk_kv * entering).sum_to_size(decay.shape)
        dG[..., -1:, :] += (d_decay * decay).mT
        return dq, dk, dv, dG, d_state, None


def _light_backward(
    d_o: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    G: Tensor | None,
    A: Tensor,
    entering: Tensor | None,
    exp_G: Tensor | None,
    needs_dG: bool,
) -> tuple[Tensor | None, ...]:
    """``_ChunkedGLA``'s backward for one chunk without state outputs: o = A v + q_in S_0."""
    dv = A.mT @ d_o
    dk = torch.zeros_like(k)
    d_state = None
    if entering is None:
        dq = torch.zeros_like(q)
    else:
        dq = d_o @ entering.mT  # gradient of q_in
        q_in = q if exp_G is None else q * exp_G
        d_state = (q_in.mT @ d_o).squeeze(2)
        if exp_G is not None:
            dq *= exp_G
    _intra_scores_backward(d_o @ v.mT, q, k, G, dq, dk)
    dG = None
    if G is not None and needs_dG:
        dG = (q * dq - k * dk).sum_to_size(G.shape)
    return dq, dk, dv, dG, d_state, None


def _inter_operands(
    q: Tensor, k: Tensor, exp_G: Tensor | None, exp_G_to_end: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``q ⊙ exp G``, ``k ⊙ exp(G_C − G)`` and the chunk decay ``exp G_C`` as ``[..., K|1, 1]``."""
    if exp_G is None:
        return q, k, None
    return q * exp_G, k * exp_G_to_end, exp_G[..., -1:, :].mT.contiguous()


def _scan(chunk_kv: Tensor, decay: Tensor | None, state: Tensor) -> tuple[Tensor, Tensor]:
    """State recurrence across chunks ``S_n = decay_n ⊙ S_{n-1} + chunk_kv_n``.

    Shapes: chunk_kv ``[B,H,N,K,V]``, decay ``[B,H,N,K,1]`` or ``[B,H,N,1,1]`` (None: no
    decay), state S_0 ``[B,H,K,V]``. Returns the states entering each chunk ``[B,H,N,K,V]``
    and S_N.
    """
    entering = torch.empty_like(chunk_kv)
    entering[:, :, 0] = state
    final = torch.empty_like(state)
    steps = zip(
        entering.unbind(2),
        _per_chunk(decay, chunk_kv.shape[2]),
        chunk_kv.unbind(2),
        [*entering.unbind(2)[1:], final],
        strict=True,
    )
    for step in steps:
        _decay_add(*step)
    return entering, final


def _scan_backward(
    d_entering: Tensor, d_state: Tensor, decay: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Reverse of ``_scan``: gradients of chunk_kv (= of each S_n) ``[B,H,N,K,V]`` and of S_0.

    ``dS_{n-1} = dE_n + decay_n ⊙ dS_n``, starting from the gradient of S_N.
    """
    d_chunk_kv = torch.empty_like(d_entering)
    d_chunk_kv[:, :, -1] = d_state
    d_initial = torch.empty_like(d_state)
    steps = zip(
        d_chunk_kv.unbind(2),
        _per_chunk(decay, d_entering.shape[2]),
        d_entering.unbind(2),
        [d_initial, *d_chunk_kv.unbind(2)[:-1]],
        strict=True,
    )
    for step in reversed(list(steps)):
        _decay_add(*step)
    return d_chunk_kv, d_initial


def _per_chunk(decay: Tensor | None, n: int) -> list[Tensor | None] | tuple[Tensor, ...]:
    """The n per-chunk decays ``[B,H,K|1,1]`` (Nones without decay)."""
    return [None] * n if decay is None else decay.unbind(2)


def _decay_add(x: Tensor, decay: Tensor | None, add: Tensor, out: Tensor) -> None:
    """``out = decay ⊙ x + add`` (``x + add`` without decay), written into ``out``."""
    if decay is None:
        torch.add(add, x, out=out)
    else:
        torch.addcmul(add, x, decay, out=out)


def _intra_scores(q: Tensor, k: Tensor, G: Tensor | None) -> Tensor:
    """Causal intra-chunk scores ``A_ts = Σ_k q_tk k_sk exp(G_tk − G_sk)`` for s ≤ t, else 0.

    Shapes: q, k ``[..., C, K]``, G ``[..., C, K]``, ``[..., C, 1]`` or None; returns
    ``[..., C, C]``. Scalar decay uses one masked [C, C] decay matrix. Per-key decay tiles the
    strict lower triangle by recursive halving: at half-width m = C/2, C/4, ..., 1 every block
    of 2m positions splits into halves, and the later half (rows t) meets the earlier half
    (columns s) through the reference r = last position of the earlier half,
    ``exp(G_t − G_s) = exp(G_t − G_r) · exp(G_r − G_s)`` with both factors ≤ 1. Each level is
    one [C/2, K] @ [K, C/2] matmul per chunk whose block-diagonal [m, m] tiles are kept.
    """
    if G is None:
        return (q @ k.mT).tril_()
    if G.shape[-1] == 1:
        return (q @ k.mT).mul_(_decay_matrix(G))
    A = q.new_zeros(*q.shape[:-1], q.shape[-2])
    A.diagonal(dim1=-2, dim2=-1).copy_((q * k).sum(-1))
    for m in _half_widths(q.shape[-2]):
        rows, cols, _, _ = _level_operands(q, k, G, m)
        _tiles_in_square(A, m).copy_(
            _tiles_in_level(rows.flatten(-3, -2) @ cols.flatten(-3, -2).mT, m)
        )
    return A


def _intra_scores_backward(
    dA: Tensor, q: Tensor, k: Tensor, G: Tensor | None, dq: Tensor, dk: Tensor
) -> None:
    """Add the q and k gradients of ``_intra_scores`` given dA ``[..., C, C]`` into dq, dk.

    The G gradient follows from these (see ``_ChunkedGLA.backward``).
    """
    if G is None or G.shape[-1] == 1:
        dA = dA.tril_() if G is None else dA.mul_(_decay_matrix(G))
        dq += dA @ k
        dk += dA.mT @ q
        return
    d_diag = dA.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    dq.addcmul_(d_diag, k)
    dk.addcmul_(d_diag, q)
    half = q.shape[-2] // 2
    for m in _half_widths(q.shape[-2]):
        rows, cols, row_decay, col_decay = _level_operands(q, k, G, m)
        d_level = dA.new_zeros(*dA.shape[:-2], half, half)
        _tiles_in_level(d_level, m).copy_(_tiles_in_square(dA, m))
        d_rows = (d_level @ cols.flatten(-3, -2)).unflatten(-2, rows.shape[-3:-1])
        d_cols = (d_level.mT @ rows.flatten(-3, -2)).unflatten(-2, cols.shape[-3:-1])
        _halves(dq, m)[1].addcmul_(d_rows, row_decay)
        _halves(dk, m)[0].addcmul_(d_cols, col_decay)


def _decay_matrix(G: Tensor) -> Tensor:
    """``D_ts = exp(G_t − G_s)`` for s ≤ t, else 0; G ``[..., C, 1]`` → ``[..., C, C]``."""
    return _exp_decay_((G - G.mT).tril_()).tril_()


def _exp_decay_(log_decay: Tensor) -> Tensor:
    """In-place ``exp`` of log decays (≤ 0), clamped below at −87 (``exp(−87)`` ≈ 1.6e-38).

    The vectorised CPU exp takes a many times slower path for arguments whose result would be
    subnormal or zero, which strong decay produces in bulk; the clamp changes results by less
    than 2e-38.
    """
    return log_decay.clamp_(min=-87.0).exp_()


def _half_widths(chunk: int) -> list[int]:
    """Half-widths chunk/2, chunk/4, ..., 1 of the recursive halving levels."""
    return [chunk >> level for level in range(1, chunk.bit_length())]


def _halves(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Views ``[..., C/(2m), m, D]`` of the earlier and later halves of each 2m-block of x."""
    blocks = x.unflatten(-2, (x.shape[-2] // (2 * m), 2, m))
    return blocks[..., 0, :, :], blocks[..., 1, :, :]


def _level_operands(
    q: Tensor, k: Tensor, G: Tensor, m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows ``q_t ⊙ exp(G_t − G_r)`` (later halves), columns ``k_s ⊙ exp(G_r − G_s)`` (earlier
    halves) of halving level m, and the two decay factors; all ``[..., C/(2m), m, K]``."""
    _, q_late = _halves(q, m)
    k_early, _ = _halves(k, m)
    G_early, G_late = _halves(G, m)
    G_ref = G_early[..., -1:, :]
    row_decay = _exp_decay_(G_late - G_ref)
    col_decay = _exp_decay_(G_ref - G_early)
    return q_late * row_decay, k_early * col_decay, row_decay, col_decay


def _tiles_in_square(A: Tensor, m: int) -> Tensor:
    """View ``[..., m, m, C/(2m)]`` of the level-m tiles (later half × earlier half of each
    2m-block) of a ``[..., C, C]`` matrix."""
    blocks = A.shape[-1] // (2 * m)
    grid = A.unflatten(-2, (blocks, 2, m)).unflatten(-1, (blocks, 2, m))
    return grid[..., 1, :, :, 0, :].diagonal(dim1=-4, dim2=-2)


def _tiles_in_level(X: Tensor, m: int) -> Tensor:
    """View ``[..., m, m, C/(2m)]`` of the diagonal [m, m] blocks of a ``[..., C/2, C/2]``
    level product (rows: later halves, columns: earlier halves)."""
    blocks = X.shape[-1] // m
    return X.unflatten(-2, (blocks, m)).unflatten(-1, (blocks, m)).diagonal(dim1=-4, dim2=-2)
