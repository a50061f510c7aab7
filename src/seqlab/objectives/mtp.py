"""Multi-token prediction (Gloeckle et al., 2024, "Better & Faster Large Language Models via
Multi-token Prediction"), with linear heads on a shared trunk.

The model's output layer holds `heads` blocks of V logits (model vocabulary heads · V, of
which the inputs use the first V ids): block i at position t predicts x_{t+1+i}. The loss
is the mean over heads of their cross-entropies; the NLL is head 0's, the exact next-token
NLL, so an `mtp` model is ranked like any AR model. The extra heads serve as drafts for
self-speculative decoding (`sampler="self_speculative"`).

The paper's heads are one transformer layer each under a shared unembedding; here a head is
a slice of the (possibly tied) output projection, which needs no change to the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.model import Model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import OBJECTIVES


@OBJECTIVES.register("mtp")
class MultiTokenPrediction(Autoregressive):
    """Multi-token prediction with linear heads (exact next-token NLL from head 0).

    `heads` next-token predictors: head i at position t scores x_{t+1+i}."""

    reads_values = False

    def __init__(self, *, heads: int = 2) -> None:
        if not isinstance(heads, int) or heads < 1:
            raise ConfigError(f"mtp heads must be a positive integer, got {heads!r}")
        self.heads = heads

    def model_vocab_size(self, vocab_size: int) -> int:
        return self.heads * vocab_size

    def split_heads(self, logits: Tensor) -> Tensor:
        """`[..., heads · V]` -> `[..., heads, V]`."""
        return logits.unflatten(-1, (self.heads, logits.shape[-1] // self.heads))

    def _logits(self, model: Model, batch: Batch) -> Tensor:
        logits, _ = model(batch.tokens[:, :-1], layout=self.layout)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        return self.split_heads(logits)

    def _head_nll(self, logits: Tensor, batch: Batch, head: int) -> tuple[Tensor, Tensor]:
        """Per-target NLL of `head` `[B, L-1-head]` and the float mask of scored targets."""
        targets = batch.tokens[:, 1 + head :]
        scores = logits[:, : targets.shape[1], head]
        nll = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), reduction="none")
        mask = (
            torch.ones_like(targets, dtype=nll.dtype)
            if batch.mask is None
            else batch.mask[:, 1 + head :].to(nll.dtype)
        )
        return nll.view_as(targets), mask

    def scored_nll(
        self, model: Model, batch: Batch
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Head 0's per-target NLL `[B, L-1]` and mask (an mtp model reads no values)."""
        nll, mask = self._head_nll(self._logits(model, batch), batch, 0)
        return nll, mask, None, None

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = self._logits(model, batch)
        losses = []
        for head in range(min(self.heads, batch.tokens.shape[1] - 1)):
            nll, mask = self._head_nll(logits, batch, head)
            losses.append((nll * mask).sum() / mask.sum().clamp(min=1))
        loss = torch.stack(losses).mean()
        metrics = {"nll": losses[0].detach().item()}
        metrics.update({f"nll_head{i}": v.detach().item() for i, v in enumerate(losses) if i})
        return loss, metrics

    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        predictions = batch.tokens.clone()
        predictions[:, 1:] = self._logits(model, batch)[:, :, 0].argmax(dim=-1)
        scored = torch.ones_like(batch.tokens, dtype=torch.bool)
        scored[:, 0] = False
        if batch.mask is not None:
            scored &= batch.mask
        return predictions, scored
