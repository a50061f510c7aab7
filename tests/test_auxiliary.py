"""Auxiliary losses recorded by layers reach the training loss and its metrics, once."""

from __future__ import annotations

import torch
from torch import nn

from seqlab.auxiliary import (
    auxiliary_losses,
    clear_auxiliary_losses,
    record_auxiliary_loss,
    record_metric,
    recorded_metrics,
)
from seqlab.config import ModelConfig
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch


class Penalised(nn.Module):
    """An identity layer that records ‖x‖² · weight as its auxiliary loss."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            record_auxiliary_loss(self, "penalty", self.weight * x.pow(2).mean())
        return x


def test_records_are_summed_by_name_and_cleared():
    net = nn.Sequential(Penalised(1.0), Penalised(2.0))
    x = torch.full((3,), 2.0)
    net(x)
    assert auxiliary_losses(net)["penalty"].item() == 12.0
    net(x)  # a second forward replaces, never accumulates
    assert auxiliary_losses(net)["penalty"].item() == 12.0
    clear_auxiliary_losses(net)
    assert auxiliary_losses(net) == {}
    with torch.no_grad():
        net(x)
    assert auxiliary_losses(net) == {}


def test_training_loss_adds_the_recorded_losses_and_reports_them():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer="attention", d_model=16, n_heads=2, vocab_size=11))
    model.blocks[0].probe = Penalised(0.5)
    model.blocks[0].mixer_norm.register_forward_hook(lambda m, i, out: model.blocks[0].probe(out))
    objective = Autoregressive().bind(11)
    batch = Batch(torch.randint(0, 11, (2, 9)))
    plain, plain_metrics = objective.loss(model, batch)
    total, metrics = objective.training_loss(model, batch)
    assert "aux_penalty" not in plain_metrics
    assert metrics["aux_penalty"] > 0
    torch.testing.assert_close(total, plain + metrics["aux_penalty"])
    total.backward()  # the recorded loss is part of the graph


class Counting(nn.Module):
    """An identity layer that records its input's size as a metric, in forward and backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        record_metric(self, "seen", float(x.numel()))
        if x.requires_grad:
            x.register_hook(lambda g: record_metric(self, "backward_seen", float(g.numel())))
        return x


def test_recorded_metrics_are_reported_not_added_and_backward_ones_are_read_after():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mixer="attention", d_model=16, n_heads=2, vocab_size=11))
    model.blocks[0].probe = Counting()
    model.blocks[0].mixer_norm.register_forward_hook(lambda m, i, out: model.blocks[0].probe(out))
    objective = Autoregressive().bind(11)
    batch = Batch(torch.randint(0, 11, (2, 9)))
    plain, _ = objective.loss(model, batch)
    total, metrics = objective.training_loss(model, batch)
    torch.testing.assert_close(total, plain)  # a metric is never part of the loss
    assert metrics["seen"] == 2 * 8 * 16 and "backward_seen" not in metrics
    total.backward()
    assert recorded_metrics(model) == {"seen": 256.0, "backward_seen": 256.0}
    clear_auxiliary_losses(model)
    assert recorded_metrics(model) == {}
