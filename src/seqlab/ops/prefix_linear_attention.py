"""Prefix linear attention (JRT-RNN, Arora et al., 2024): a non-causal encoder sum over the
prompt prefix added to the state of a causal linear attention.

Per batch element and head, with feature-mapped queries and keys (the caller applies φ), the
M prefix tokens' encoder keys k^e and values v^e, and S_0 the carried state (zeros by default):

    S_enc = Σ_{j<M} k^e_j (v^e_j)ᵀ                                  S: [K, V]
    S_t   = S_0 + S_enc + Σ_{s≤t} k_s v_sᵀ
    o_t   = scale · S_tᵀ q_t                                          o_t: [V]

Every position, the prefix's own included, reads the whole encoder sum: positions < M read
each other non-causally, later positions read the prefix and, causally, themselves and what
lies between. The causal part is `gated_linear_attention` without decay started from
S_0 + S_enc, so the chunked kernel, its hand-written backward and its recurrent reference are
reused as they are; `prefix_linear_attention_reference` is the dense [T, T] form beside them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.ops.float32 import float32_kernel
from seqlab.ops.linear_attention import gated_linear_attention

__all__ = ["prefix_linear_attention", "prefix_linear_attention_reference"]


@float32_kernel
def prefix_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_enc: Tensor,
    v_enc: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """``o_t = scale · (S_0 + Σ_{j<M} k^e_j v^eᵀ_j + Σ_{s≤t} k_s v_sᵀ)ᵀ q_t``.

    Args:
        q, k: feature-mapped queries and decoder keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        k_enc, v_enc: encoder keys ``[B, M, H, K]`` and values ``[B, M, H, V]`` of the first
            M ≤ T tokens (M = 0: plain causal linear attention).
        scale: query scale, default ``K ** -0.5``.
        initial_state: S_0 ``[B, H, K, V]``, default zeros.
        output_final_state: also return S_T (which includes S_enc: decoding continues from it).
        mode: ``"chunk"`` (the encoder sum by one einsum, the causal part chunked) or
            ``"recurrent"`` (both as plain loops over tokens; the step-by-step reference).
        chunk_size: the causal kernel's chunk, a power of two.

    Returns:
        ``(o [B, T, H, V], S_T or None)`` as `gated_linear_attention` returns them.

    Raises:
        ValueError: on encoder tensors whose shapes do not match q and v, or M > T.
    """
    B, T, H, K = q.shape
    M = k_enc.shape[1]
    if k_enc.shape != (B, M, H, K) or v_enc.shape != (B, M, H, v.shape[-1]) or M > T:
        raise ValueError(
            f"k_enc, v_enc must be [B,M,H,K]=({B},M,{H},{K}) and [B,M,H,V]=({B},M,{H},"
            f"{v.shape[-1]}) with M <= T={T}, got {tuple(k_enc.shape)}, {tuple(v_enc.shape)}"
        )
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    encoder = _encoder_state(k_enc.to(acc), v_enc.to(acc), mode)
    start = encoder if initial_state is None else initial_state.to(acc) + encoder
    return gated_linear_attention(
        q,
        k,
        v,
        scale=scale,
        initial_state=start,
        output_final_state=output_final_state,
        mode=mode,
        chunk_size=chunk_size,
    )


def _encoder_state(k_enc: Tensor, v_enc: Tensor, mode: str) -> Tensor:
    """``S_enc = Σ_j k^e_j (v^e_j)ᵀ`` ``[B, H, K, V]``: one einsum, or a loop for the reference."""
    if mode != "recurrent":
        return torch.einsum("bmhk,bmhv->bhkv", k_enc, v_enc)
    B, _, H, K = k_enc.shape
    state = k_enc.new_zeros(B, H, K, v_enc.shape[-1])
    for k_j, v_j in zip(k_enc.unbind(1), v_enc.unbind(1), strict=True):
        state = state + k_j.unsqueeze(-1) * v_j.unsqueeze(-2)
    return state


def prefix_linear_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_enc: Tensor,
    v_enc: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
) -> Tensor:
    """The dense form of `prefix_linear_attention` (tests): with A = q kᵀ masked to s ≤ t and
    E = q k^eᵀ unmasked, ``o = scale · (A v + E v^e + q S_0)``; shapes as there, o
    ``[B, T, H, V]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bthk,bshk->bhts", q, k).masked_fill(~causal, 0.0)
    o = torch.einsum("bhts,bshv->bthv", scores, v)
    o = o + torch.einsum("bthk,bmhk,bmhv->bthv", q, k_enc, v_enc)
    if initial_state is not None:
        o = o + torch.einsum("bthk,bhkv->bthv", q, initial_state.to(q.dtype))
    return scale * o
