"""Kernel backends of the chunked ops: seqlab's torch kernels, or flash-linear-attention's
Triton kernels (the `fla` package, imported only when asked for).

`ops.backend: fla` in an experiment config makes training (`seqlab.train.train`) run inside
`ops_backend("fla", device)`; there the chunk-mode calls of

    seqlab.ops.linear_attention.gated_linear_attention(q, k, v, g)
        g None        -> fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=None)
        g [B,T,H]     -> fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=g)
        g [B,T,H,K]   -> fla.ops.gla.chunk_gla(q, k, v, g)
    seqlab.ops.delta_rule.delta_rule(q, k, v, beta)
                      -> fla.ops.delta_rule.chunk_delta_rule(q, k, v, beta)
    seqlab.ops.delta_rule.gated_delta_rule(q, k, v, g, beta)
                      -> fla.ops.gated_delta_rule.chunk_gated_delta_rule(q, k, v, g, beta)

run fla's kernel instead. Both sides use the same conventions: inputs ``[B, T, H, D]``
(fla's default layout, no ``head_first``), g the log decay (≤ 0) applied before token t is
added, ``o_t = scale · S_tᵀ q_t`` with scale defaulting to ``K ** -0.5``, states
``[B, H, K, V]`` in float32 (fla's default ``state_v_first=False``), beta already in
post-sigmoid space and keys already normalised (fla's in-kernel sigmoid and L2 norm off).
k and v are passed in q's dtype, and the output is returned in it, as seqlab's kernels
return it. fla computes in the
inputs' dtype: its delta rules take bfloat16 or float16 inputs (train with
`train.precision: bf16-mixed`), and no fla kernel takes float64. The step-by-step reference
(`mode="recurrent"`), the chunk states of block diffusion (`output_chunk_states`) and empty
sequences have no fla kernel and always run seqlab's. Asking for fla without the package or
off a CUDA device is a `ConfigError`, never a silent fallback.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType

import torch
from torch import Tensor

from seqlab.config import OPS_BACKENDS
from seqlab.errors import ConfigError

__all__ = ["active_backend", "check_backend", "ops_backend"]

FLA_NEEDED = (
    "ops.backend: fla needs flash-linear-attention (pip install flash-linear-attention), "
    "which is not installed; use ops.backend: torch"
)

_BACKEND: ContextVar[str] = ContextVar("seqlab_ops_backend", default="torch")


def check_backend(name: str, device: torch.device | str | None = None) -> None:
    """That backend `name` can run on `device` (None: not checked): a known name, and for
    fla the package installed and a CUDA device."""
    if name not in OPS_BACKENDS:
        raise ConfigError(f"ops.backend must be one of {', '.join(OPS_BACKENDS)}, got {name!r}")
    if name == "fla":
        _fla_ops("simple_gla")
        if device is not None:
            require_cuda(torch.device(device))


@contextmanager
def ops_backend(name: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the chunked ops with backend `name` inside the block (checked first)."""
    check_backend(name, device)
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def active_backend() -> str:
    return _BACKEND.get()


def use_fla(mode: str, output_chunk_states: bool, length: int) -> bool:
    """Whether a chunked op called with these arguments goes to fla's kernel."""
    return _BACKEND.get() == "fla" and mode == "chunk" and not output_chunk_states and length > 0


def require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError(
            f"ops.backend: fla runs on a CUDA device, got {device}; use ops.backend: torch"
        )


def _fla_ops(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"fla.ops.{name}")
    except ImportError:
        raise ConfigError(FLA_NEEDED) from None


def _check_inputs(kernel: str, q: Tensor, half_only: bool) -> None:
    require_cuda(q.device)
    allowed = (torch.bfloat16, torch.float16) + (() if half_only else (torch.float32,))
    if q.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ConfigError(
            f"ops.backend: fla's {kernel} takes {names} inputs, got "
            f"{str(q.dtype).removeprefix('torch.')}; use ops.backend: torch or train in bf16"
        )


def _state(initial_state: Tensor | None) -> Tensor | None:
    return None if initial_state is None else initial_state.float()


def fla_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    scale: float | None,
    initial_state: Tensor | None,
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """`gated_linear_attention` in chunk mode through fla: `chunk_gla` for a per-key decay,
    `chunk_simple_gla` for a per-head one or none."""
    per_key = g is not None and g.dim() == 4
    kernel = "chunk_gla" if per_key else "chunk_simple_gla"
    _check_inputs(kernel, q, half_only=False)
    k, v = k.to(q.dtype), v.to(q.dtype)
    options = {
        "scale": q.shape[-1] ** -0.5 if scale is None else scale,
        "initial_state": _state(initial_state),
        "output_final_state": output_final_state,
    }
    if per_key:
        o, final = _fla_ops("gla").chunk_gla(q, k, v, g, **options)
    else:
        o, final = _fla_ops("simple_gla").chunk_simple_gla(q, k, v, g=g, **options)
    return o.to(q.dtype), final if output_final_state else None


def fla_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """`delta_rule` (g None) or `gated_delta_rule` in chunk mode through fla."""
    kernel = "chunk_delta_rule" if g is None else "chunk_gated_delta_rule"
    _check_inputs(kernel, q, half_only=True)
    k, v = k.to(q.dtype), v.to(q.dtype)
    options = {
        "scale": q.shape[-1] ** -0.5 if scale is None else scale,
        "initial_state": _state(initial_state),
        "output_final_state": output_final_state,
        "use_qk_l2norm_in_kernel": False,
    }
    if g is None:
        o, final = _fla_ops("delta_rule").chunk_delta_rule(q, k, v, beta, **options)
    else:
        module = _fla_ops("gated_delta_rule")
        o, final = module.chunk_gated_delta_rule(q, k, v, g, beta, **options)
    return o.to(q.dtype), final if output_final_state else None
