"""Autoregressive next-token prediction: -Σ_t log p(x_{t+1} | x_{≤t}) over scored positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import NLL, Batch, Objective, scored_mask
from seqlab.registry import OBJECTIVES
from seqlab.sampling.ar import fill


@OBJECTIVES.register("ar")
class Autoregressive(Objective):
    """Autoregressive next-token cross-entropy (exact NLL).

    Causal model on tokens[:, :-1] predicting tokens[:, 1:]; `mask[:, 1:]` selects targets."""

    bound = False
    layout = Layout.CAUSAL

    def token_nll(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-target NLL `[B, L-1]` (nats) and the float mask of scored targets."""
        logits, _ = model(batch.tokens[:, :-1], layout=self.layout)
        targets = batch.tokens[:, 1:]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = (
            torch.ones_like(targets, dtype=nll.dtype)
            if batch.mask is None
            else (batch.mask[:, 1:].to(nll.dtype))
        )
        return nll.view_as(targets), mask

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        nll, mask = self.token_nll(model, batch)
        loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"nll": loss.detach().item()}

    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        logits, _ = model(batch.tokens[:, :-1], layout=self.layout)
        predictions = batch.tokens.clone()
        predictions[:, 1:] = logits.argmax(dim=-1)
        scored = torch.ones_like(batch.tokens, dtype=torch.bool)
        scored[:, 0] = False
        if batch.mask is not None:
            scored &= batch.mask
        return predictions, scored

    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Greedy left to right (`sampling.ar.fill`): a scored position is decoded from the
        model's own earlier predictions when reached, an unscored one is context, copied
        from the batch. Position 0 has no prefix and is never scored (as in `predict`)."""
        scored = scored_mask(batch).clone()
        scored[:, 0] = False
        filled, _ = fill(model, batch.tokens, ~scored, self.vocab_size)
        return filled, scored

    def next_log_probs(self, model: Model, context: Tensor) -> Tensor:
        """log p(x_{L+1} | context) `[B, V]`: the next-token logits at the last position (an
        `mtp` model's head 0)."""
        logits, _ = model(context, layout=self.layout)
        last = logits[:, -1, : self.vocab_size]
        return (last if last.dtype == torch.float64 else last.float()).log_softmax(-1)

    def nll(self, model: Model, batch: Batch) -> NLL:
        nll, mask = self.token_nll(model, batch)
        nats = (nll.detach().double() * mask.double()).sum()
        return NLL(float(nats), int(mask.sum()), bound=False)
