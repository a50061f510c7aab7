"""Auxiliary training losses and metrics that layers record during a forward or backward.

Losses (routers' load balancing):
A layer calls `record_auxiliary_loss(self, "balance", value)` inside its forward, with the
value already weighted by its own coefficient; `Objective.training_loss` clears every record
before the objective's forward and adds what was recorded afterwards, reporting each name as
the metric `aux_<name>`. A record is kept only while autograd is on (training), and a layer's
second forward replaces its first record, so a stale record lives at most until the next
training step clears it.

Metrics (e.g. a deep equilibrium layer's solver iterations and residuals): a layer calls
`record_metric(self, "deq_iterations", value)`, in its forward or in a backward hook, with or
without autograd; `Objective.training_loss` clears them with the losses and reports what the
forward recorded under the metric's own name, and the trainer reads `recorded_metrics` again
after the backward (so metrics recorded there are logged too). A name recorded by several
layers is summed, as losses are (so give per-layer rates their own names).
"""

from __future__ import annotations

from torch import Tensor, nn

_RECORDS = "_auxiliary_losses"
_METRICS = "_recorded_metrics"


def record_auxiliary_loss(module: nn.Module, name: str, value: Tensor) -> None:
    """Keep `value` (a scalar, already weighted) as `module`'s auxiliary loss `name`."""
    records = module.__dict__.setdefault(_RECORDS, {})
    records[name] = value


def record_metric(module: nn.Module, name: str, value: float | Tensor) -> None:
    """Keep `value` (a number or scalar tensor, never part of the loss) as `module`'s metric
    `name`, replacing what it recorded before under that name."""
    metrics = module.__dict__.setdefault(_METRICS, {})
    metrics[name] = value.detach() if isinstance(value, Tensor) else value


def clear_auxiliary_losses(model: nn.Module) -> None:
    """Forget every recorded auxiliary loss and metric of `model`'s layers."""
    for module in model.modules():
        module.__dict__.pop(_RECORDS, None)
        module.__dict__.pop(_METRICS, None)


def recorded_metrics(model: nn.Module) -> dict[str, float]:
    """The metrics `model`'s layers recorded since the last clear, summed by name."""
    totals: dict[str, float] = {}
    for module in model.modules():
        for name, value in module.__dict__.get(_METRICS, {}).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def auxiliary_losses(model: nn.Module) -> dict[str, Tensor]:
    """The recorded auxiliary losses of all of `model`'s layers, summed by name."""
    totals: dict[str, Tensor] = {}
    for module in model.modules():
        for name, value in module.__dict__.get(_RECORDS, {}).items():
            totals[name] = value if name not in totals else totals[name] + value
    return totals
