"""Auxiliary training losses that layers record during a forward (routers' load balancing).

A layer calls `record_auxiliary_loss(self, "balance", value)` inside its forward, with the
value already weighted by its own coefficient; `Objective.training_loss` clears every record
before the objective's forward and adds what was recorded afterwards, reporting each name as
the metric `aux_<name>`. A record is kept only while autograd is on (training), and a layer's
second forward replaces its first record, so a stale record lives at most until the next
training step clears it.
"""

from __future__ import annotations

from torch import Tensor, nn

_RECORDS = "_auxiliary_losses"


def record_auxiliary_loss(module: nn.Module, name: str, value: Tensor) -> None:
    """Keep `value` (a scalar, already weighted) as `module`'s auxiliary loss `name`."""
    records = module.__dict__.setdefault(_RECORDS, {})
    records[name] = value


def clear_auxiliary_losses(model: nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop(_RECORDS, None)


def auxiliary_losses(model: nn.Module) -> dict[str, Tensor]:
    """The recorded auxiliary losses of all of `model`'s layers, summed by name."""
    totals: dict[str, Tensor] = {}
    for module in model.modules():
        for name, value in module.__dict__.get(_RECORDS, {}).items():
            totals[name] = value if name not in totals else totals[name] + value
    return totals
