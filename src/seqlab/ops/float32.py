"""The float32 guard of the recurrence kernels under mixed precision.

Under `torch.autocast` (training with `train.precision: bf16-mixed | fp16-mixed`) the
projections feeding a kernel come out in bfloat16 or float16. Scans, chunked linear attention,
the delta rules, the selective scan and FFT convolutions accumulate products and sums over
the whole sequence, where an 8- or 11-bit mantissa loses the state within a few hundred steps.
`float32_kernel` runs such a kernel with autocast disabled and its half-precision tensor
arguments upcast to float32, so it computes and returns float32; float64 and complex inputs,
and every call outside autocast, pass through untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

Kernel = TypeVar("Kernel", bound=Callable[..., Any])

HALF = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.dtype in HALF else value
    if isinstance(value, tuple | list):
        return type(value)(_upcast(v) for v in value)
    return value


def _autocast_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The device type of the first tensor argument, when autocast is on for it."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            kind = value.device.type
            return kind if torch.is_autocast_enabled(kind) else None
    return None


def float32_kernel(kernel: Kernel) -> Kernel:
    """Run `kernel` in float32 when autocast is on: autocast off inside, half-precision tensor
    arguments (also inside tuples and lists) upcast; otherwise call it as it is."""

    @functools.wraps(kernel)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        device = _autocast_device(args, kwargs)
        if device is None:
            return kernel(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return kernel(*_upcast(args), **{k: _upcast(v) for k, v in kwargs.items()})

    return guarded  # type: ignore[return-value]
