"""What the mixers share: option validators, head helpers, and the Mamba-style initialisation
of the time step Δ and the decay rate A.

Not a mixer: the registry imports this module with the others and finds nothing to register.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.base import keep_init

# Validators: each raises a ConfigError that names the mixer and the option.


def check_positive(name: str, **values: object) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} {key} must be a positive integer, got {value!r}")


def check_bool(name: str, **values: object) -> None:
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} {key} must be true or false, got {value!r}")


def check_conv_size(name: str, conv_size: object) -> None:
    """A short-conv width that may be 0 (no conv)."""
    if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
        raise ConfigError(f"{name} conv_size must be an integer >= 0, got {conv_size!r}")


def check_range(name: str, low_name: str, low: float, high_name: str, high: float) -> None:
    """`0 < low <= high` (e.g. dt_min and dt_max, A_min and A_max)."""
    if not 0 < low <= high:
        raise ConfigError(f"{name} needs 0 < {low_name} <= {high_name}, got {low}, {high}")


# Heads.


def head_dim(name: str, what: str, width: float, heads: int) -> int:
    """Per-head width `width / heads`, which must be a positive integer."""
    dim = width / heads
    if dim != int(dim) or dim < 1:
        raise ConfigError(f"{name}: {what} width {width:g} does not split into {heads} heads")
    return int(dim)


def heads_view(x: Tensor, heads: int) -> Tensor:
    """`[B, T, H·D]` -> `[B, T, H, D]`."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads))


def fan_in_linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free projection with fan-in init N(0, 1/in_features) that the model-wide init
    keeps: for output gates `silu(W_g x)`, which the model-wide std (0.02) would start near
    0.05, scaling a small model's whole mixer output down (see `LinearRecurrence`)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, std=in_features**-0.5)
    keep_init(layer.weight)
    return layer


def group_norm(norm: nn.GroupNorm, o: Tensor) -> Tensor:
    """GroupNorm with one group per head of `o [B, T, H, V]` -> `[B, T, H·V]`."""
    return norm(o.flatten(0, 1).flatten(1)).view(*o.shape[:2], -1)


# Mamba-style initialisation of Δ and A (Gu & Dao 2023, Dao & Gu 2024). Each returns a fresh
# float tensor (the default dtype) for a constructor to copy into its parameter.

DT_FLOOR = 1e-4


def log_uniform_log_dt(shape: int | tuple[int, ...], dt_min: float, dt_max: float) -> Tensor:
    """log Δ₀ ~ U[log dt_min, log dt_max]: time steps log-uniform in [dt_min, dt_max]."""
    return torch.empty(shape).uniform_(math.log(dt_min), math.log(dt_max))


def dt_bias_init(shape: int | tuple[int, ...], dt_min: float, dt_max: float) -> Tensor:
    """The Δ bias b_Δ = softplus⁻¹(Δ₀), Δ₀ log-uniform in [dt_min, dt_max] and floored at
    1e-4, so that Δ = softplus(δ + b_Δ) starts at Δ₀ for δ = 0."""
    dt = log_uniform_log_dt(shape, dt_min, dt_max).exp().clamp(min=DT_FLOOR)
    return dt + torch.log(-torch.expm1(-dt))


def selective_step(dt: Tensor, dt_bias: Tensor, A_log: Tensor) -> tuple[Tensor, Tensor]:
    """Mamba-2's step and log decay from the raw δ `[..., H]`: Δ = softplus(δ + b_Δ) and
    g = Δ·A = −Δ exp(A_log) (≤ 0), both `[..., H]`; b_Δ and A_log `[H]`."""
    delta = F.softplus(dt + dt_bias)
    return delta, -delta * A_log.exp()


def uniform_A_log(shape: int | tuple[int, ...], A_min: float, A_max: float) -> Tensor:
    """A_log with A = exp(A_log) ~ U[A_min, A_max] (Mamba-2's per-head decay rates)."""
    return torch.empty(shape).uniform_(A_min, A_max).log()


def s4d_real_A_log(channels: int, d_state: int, divisor: float = 1.0) -> Tensor:
    """A_log `[channels, d_state]` with A_n = exp(A_log_n) = n / divisor, n = 1 … d_state, in
    every channel (S4D-Real, Mamba's init)."""
    n = torch.arange(1, d_state + 1, dtype=torch.get_default_dtype())
    if divisor != 1.0:
        n = n / divisor
    return n.log().expand(channels, d_state).clone()
