"""Divergence guard: a step whose loss or gradient norm is not finite, or whose loss spikes
above `train.spike_guard` times the running loss, is stopped before the optimizer applies it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

# Weight of the newest step in the running loss (an exponential moving average).
RUNNING_WEIGHT = 0.1


def gradient_norm(parameters: Iterable[nn.Parameter], clip: float) -> float:
    """The global L2 norm of the gradients, clipping them to `clip` first when `clip > 0`
    (torch's fused norm; an infinite limit scales by exactly 1)."""
    return float(nn.utils.clip_grad_norm_(list(parameters), clip if clip > 0 else math.inf))


class DivergenceGuard:
    """Judges each step before its optimizer update and keeps the running loss.

    `spike_guard` is a factor (0: off): a finite loss above `spike_guard x` the running loss
    is a spike. The running loss is part of the checkpoint, so a resumed run judges exactly
    as an uninterrupted one.
    """

    def __init__(self, spike_guard: float, running_loss: float | None = None) -> None:
        self.spike_guard = spike_guard
        self.running_loss = running_loss

    def problem(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must not reach the optimizer, or None."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm}"
        if (
            self.spike_guard > 0
            and self.running_loss is not None
            and loss > self.spike_guard * self.running_loss
        ):
            return (
                f"the loss {loss:.4g} is above train.spike_guard ({self.spike_guard:g}) x the "
                f"running loss {self.running_loss:.4g}"
            )
        return None

    def update(self, loss: float) -> None:
        """Fold a step that was applied into the running loss."""
        if self.running_loss is None:
            self.running_loss = loss
        else:
            self.running_loss += RUNNING_WEIGHT * (loss - self.running_loss)
