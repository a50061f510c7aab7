"""Autoregressive next-token prediction: -Σ_t log p(x_{t+1} | x_{≤t}) over scored positions
(and, with values beside the tokens, -Σ_t log p(v_{t+1} | x_{≤t}, v_{≤t}) of the value head)."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from seqlab.auxiliary import auxiliary_losses, clear_auxiliary_losses
from seqlab.errors import ConfigError
from seqlab.heads.base import distribution_dtype
from seqlab.layout import Layout
from seqlab.model import Model, unwrap
from seqlab.objectives.base import NLL, Batch, Objective, scored_mask
from seqlab.registry import OBJECTIVES
from seqlab.sampling.ar import fill
from seqlab.sequence_parallel import SequenceShard, sharded, split_bounds


def target_nll(logits: Tensor, targets: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-target cross-entropy `[B, n]` of logits `[B, n, V]` (float32 at least) against
    targets `[B, n]`, and the float mask of the scored ones (`mask` bool `[B, n]`; None: all)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view_as(targets)
    return nll, torch.ones_like(nll) if mask is None else mask.to(nll.dtype)


@OBJECTIVES.register("ar")
class Autoregressive(Objective):
    """Autoregressive next-token cross-entropy (exact NLL).

    Causal model on tokens[:, :-1] predicting tokens[:, 1:]; `mask[:, 1:]` selects targets.

    A batch with `values` (a marked sequence: a time or a series value beside each token)
    trains the model's value head too: the loss is the mean token NLL plus the mean value NLL
    −log p(v_{t+1} | x_{≤t}, v_{≤t}) over `value_mask[:, 1:]`, and `nll` sums both over the
    scored values (nats per event: mark and time together, as point-process papers report),
    counted per position scored by either mask (once where both score it)."""

    bound = False
    layout = Layout.CAUSAL
    reads_values = True

    def token_nll(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-target NLL `[B, L-1]` (nats) and the float mask of scored targets."""
        nll, mask, _, _ = self.scored_nll(model, batch)
        return nll, mask

    def scored_nll(
        self, model: Model, batch: Batch
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Per-target token NLL `[B, L-1]` and its float mask, then (a batch with values) the
        per-target value NLL `[B, L-1]` and its float mask (None, None otherwise)."""
        inputs = batch.tokens[:, :-1]
        if batch.values is None:
            logits, _ = model(inputs, layout=self.layout)
            value_nll = value_mask = None
        else:
            head = getattr(unwrap(model), "value_head", None)
            if head is None:
                raise ConfigError(
                    "the task's batches carry values (times or series values) but the model "
                    "has no value head: set model.value_head (seqlab list value_heads)"
                )
            logits, _, parameters = model(inputs, layout=self.layout, values=batch.values[:, :-1])
            distribution = head.from_parameters(parameters)
            scored = batch.mask if batch.value_mask is None else batch.value_mask
            targets = batch.values[:, 1:]
            if scored is not None:  # an unscored value may lie outside the support (a PAD's 0)
                targets = torch.where(scored[:, 1:], targets, torch.ones_like(targets))
            value_nll = -distribution.log_prob(targets.to(distribution_dtype(parameters.dtype)))
            value_mask = (
                torch.ones_like(value_nll) if scored is None else scored[:, 1:].to(value_nll)
            )
        scored = None if batch.mask is None else batch.mask[:, 1:]
        nll, mask = target_nll(logits, batch.tokens[:, 1:], scored)
        return nll, mask, value_nll, value_mask

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        nll, mask, value_nll, value_mask = self.scored_nll(model, batch)
        loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        if value_nll is None:
            return loss, {"nll": loss.detach().item()}
        value_loss = (value_nll * value_mask).sum() / value_mask.sum().clamp(min=1)
        metrics = {"token_nll": loss.detach().item(), "value_nll": value_loss.detach().item()}
        loss = loss + value_loss
        return loss, {"nll": loss.detach().item(), **metrics}

    def shard_nll(self, model: Model, batch: Batch, shard: SequenceShard) -> tuple[Tensor, int]:
        """This rank's summed token NLL over the scored targets of its shard of the input
        positions (`seqlab.sequence_parallel`; the columns follow `shard.split`,
        `split_bounds`), and the whole batch's count of scored targets. Every rank holds the
        whole batch: the target of its last position is the next rank's first input token."""
        if batch.values is not None:
            raise ConfigError("train.sequence_parallel does not support batches with values")
        length = batch.tokens.shape[1] - 1
        scored = None if batch.mask is None else batch.mask[:, 1:]
        bounds = tuple(split_bounds(length, shard.size, shard.split, scored))
        start, end = bounds[shard.rank]
        positions = torch.arange(start, end, device=batch.tokens.device)
        clear_auxiliary_losses(model)
        with sharded(dataclasses.replace(shard, start=start, bounds=bounds)):
            logits, _ = model(batch.tokens[:, start:end], layout=self.layout, positions=positions)
        if auxiliary_losses(model):
            raise ConfigError(
                "train.sequence_parallel does not support layers with auxiliary losses "
                f"({sorted(auxiliary_losses(model))}): they are statistics of the whole sequence"
            )
        targets = batch.tokens[:, start + 1 : end + 1]
        nll, mask = target_nll(logits, targets, None if scored is None else scored[:, start:end])
        count = targets.shape[0] * length if scored is None else int(scored.sum())
        return (nll * mask).sum(), count

    def sharded_loss(
        self, model: Model, batch: Batch, shard: SequenceShard
    ) -> tuple[Tensor, dict[str, float]]:
        """The training loss of this rank's shard (`shard_nll`), scaled by the group size so
        that the mean over the group's ranks (what DDP averages) is the whole sequence's."""
        local, count = self.shard_nll(model, batch, shard)
        loss = local * shard.size / max(count, 1)
        return loss, {"nll": loss.detach().item()}

    def sharded_nll(self, model: Model, batch: Batch, shard: SequenceShard) -> NLL:
        """`nll` of the whole batch, each rank of `shard.group` computing its shard
        (`shard_nll`; the nats summed over the group, a collective)."""
        local, count = self.shard_nll(model, batch, shard)
        nats = local.detach().double()
        dist.all_reduce(nats, group=shard.group)
        return NLL(float(nats), count, bound=False)

    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.values is None:
            logits = model(batch.tokens[:, :-1], layout=self.layout)[0]
        else:
            values = batch.values[:, :-1]
            logits = model(batch.tokens[:, :-1], layout=self.layout, values=values)[0]
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
        """Summed token NLL over the scored tokens; with values, plus the summed value NLL,
        counted per position scored by either mask, once where both score it (nats per event
        where the masks coincide, as in `events`; per value where no token is scored, as in
        `timeseries`' continuous outputs)."""
        nll, mask, value_nll, value_mask = self.scored_nll(model, batch)
        nats = (nll.detach().double() * mask.double()).sum()
        if value_nll is None:
            return NLL(float(nats), int(mask.sum()), bound=False)
        nats = nats + (value_nll.detach().double() * value_mask.double()).sum()
        return NLL(float(nats), int(((mask > 0) | (value_mask > 0)).sum()), bound=False)
