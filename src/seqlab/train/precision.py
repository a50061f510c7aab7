"""Mixed precision, `torch.compile` and throughput reporting of the training loop.

`train.precision` (`fp32 | bf16-mixed | fp16-mixed`): the model's forward runs under
`torch.autocast` in the low-precision dtype; the weights, gradients and optimizer state stay
float32, the logits are upcast to float32 before the loss (so log-softmax and the cross-entropy
are float32), and the recurrence kernels in `seqlab.ops` compute in float32
(`seqlab.ops.float32.float32_kernel`). fp16 scales the loss with a `GradScaler`; a step whose
scaled gradients overflow is skipped by the scaler (which lowers the scale), not reported as a
divergence.

`train.compile`: the forward is wrapped by `torch.compile`; a compilation failure stops the run
with one line naming it (never a silent fallback to eager).

Throughput: tokens/s over the steps since the last log line, and model-FLOPs utilisation

    MFU = 3 · flops_per_token(T) · tokens/s / peak FLOP/s,

with the peak from `train.peak_flops` or, on a known GPU, from `PEAK_FLOPS` (none on CPU).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.ops.float32 import HALF

DTYPES = {"fp32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
# torch.compile's backend (tests swap in "eager": inductor's C++ build takes a minute on CPU)
COMPILE_BACKEND: Any = "inductor"

# Dense peak FLOP/s per GPU model (a substring of `torch.cuda.get_device_name`, most specific
# first): (bfloat16/float16 tensor cores, float32 without TF32).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10", 125e12, 31.2e12),
    ("V100", 125e12, 15.7e12),
)


class MixedPrecision:
    """Autocast, loss scaling and the optimizer step for one `train.precision`."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in DTYPES:
            raise ConfigError(f"train.precision must be one of {', '.join(DTYPES)}")
        self.name, self.device_type, self.dtype = precision, device.type, DTYPES[precision]
        cuda = device.type == "cuda"
        if self.dtype is torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision bf16-mixed: {device} has no bfloat16")
        self.scaler: torch.amp.GradScaler | None = None
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)
            if not self.scaler.is_enabled():
                raise ConfigError(
                    f"train.precision fp16-mixed needs a gradient scaler on {device.type}, "
                    "which this torch lacks; use bf16-mixed"
                )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def wrap(self, net: nn.Module) -> nn.Module:
        """`net` itself in fp32; otherwise its forward under autocast with float32 logits."""
        return net if self.dtype is None else AutocastForward(net, self)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping and the norm)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def judged_norm(self, grad_norm: float) -> float:
        """The gradient norm the divergence guard judges: an fp16 overflow is the scaler's
        business (it skips the step), so it is not a divergence."""
        return 0.0 if self.scaler is not None and not math.isfinite(grad_norm) else grad_norm

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint's `extra` keeps: the fp16 loss scale, nothing otherwise."""
        return {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        if self.scaler is not None and extra.get("grad_scaler"):
            self.scaler.load_state_dict(extra["grad_scaler"])


class AutocastForward(nn.Module):
    """A model's forward under autocast; its logits (first output) upcast to float32."""

    def __init__(self, net: nn.Module, precision: MixedPrecision) -> None:
        super().__init__()
        self.net = net
        self.precision = precision

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.precision.autocast():
            logits, *rest = self.net(*args, **kwargs)
        return (logits.float() if logits.dtype in HALF else logits, *rest)


def compile_model(net: nn.Module) -> nn.Module:
    """`torch.compile(net)`; compilation itself happens at the first call (`compile_failures`)."""
    try:
        return torch.compile(net, backend=COMPILE_BACKEND)
    except RuntimeError as err:
        message = f"train.compile: torch.compile is unavailable: {_first_line(err)}"
        raise SeqlabError(message) from None


@contextlib.contextmanager
def compile_failures(enabled: bool) -> Iterator[None]:
    """Turn a torch.compile failure inside the block into one user-visible line."""
    if not enabled:
        yield
        return
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    try:
        yield
    except (TorchDynamoException, CppCompileError) as err:
        cause = getattr(err, "inner_exception", None) or err  # a backend's own error
        raise SeqlabError(
            f"train.compile: torch.compile failed ({type(cause).__name__}: "
            f"{_first_line(cause)}); set train.compile: false to train without it"
        ) from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:300]


def peak_flops(device: torch.device, precision: str, configured: float | None) -> float | None:
    """The peak FLOP/s of one device: `configured`, else a known GPU's, else None."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model, half, single in PEAK_FLOPS:
        if model in name:
            if DTYPES[precision] is not None:
                return half
            # TF32 tensor cores (dense) run at half the bfloat16 rate
            return single if torch.get_float32_matmul_precision() == "highest" else half / 2
    return None


class Throughput:
    """Training tokens/s (and MFU when the peak is known) since the last `restart`."""

    def __init__(self, flops_per_token: float, peak: float | None, tokens: int) -> None:
        self.flops_per_token, self.peak = flops_per_token, peak
        self.restart(tokens)

    def restart(self, tokens: int) -> None:
        self.tokens, self.time = tokens, time.perf_counter()

    def report(self, tokens: int) -> dict[str, float]:
        seconds = time.perf_counter() - self.time
        if seconds <= 0 or tokens <= self.tokens:
            return {}
        rate = (tokens - self.tokens) / seconds
        out: dict[str, float] = {"tokens_per_s": round(rate)}
        if self.peak is not None:
            out["mfu"] = 3.0 * self.flops_per_token * rate / self.peak
        return out
