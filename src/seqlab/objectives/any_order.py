"""Any-order autoregression (σ-GPT): the chain rule along a permutation of the sequence.

    −log p_π(x) = −Σ_k log p(x_{π(k)} | x_{π(1)}, …, x_{π(k−1)})

The model runs causally over the permuted tokens [BOS, x_{π(1)}, …, x_{π(L−1)}]. Input k
carries two positions (double positional encoding): its own, π(k), as the rotary position
and in the first half of a fixed sinusoidal input embedding, and the position of the token
it must predict, π(k+1), in the second half, so backbones without rotary (recurrent
mixers) see both. Positions are shifted by one so BOS sits at 0. Every scored token is
predicted (the first from BOS alone), unlike `ar`, which takes x_0 as given.

Unscored positions (`batch.mask` False) come first in their natural order: they are the
context the scored tokens are predicted from, in a random order (or left to right).
With `order="identity"` the NLL is exact; with random orders `nll` averages −log p_π(x)
over `eval_orders` permutations, which bounds the NLL of the mixture over orders from above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import NLL, Batch, Objective, scored_mask
from seqlab.registry import OBJECTIVES


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Fixed encodings `[*positions.shape, dim]`: sin and cos of position · 10000^(−2i/dim)."""
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.double()[..., None] * freq.to(positions.device)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :dim]


def embedding_shape(model: Model) -> tuple[int, torch.dtype]:
    """d_model and embedding dtype of a model, or of the model inside a DDP wrapper."""
    inner = getattr(model, "module", model)
    return inner.config.d_model, inner.embed.weight.dtype


@dataclass
class Scores:
    """One draw of an order (and grouping) at the original positions: the NLL of every
    token `[B, L]`, which of them count `[B, L]` and the logits they come from `[B, L, V]`."""

    nll: Tensor
    scored: Tensor
    logits: Tensor

    def loss(self) -> tuple[Tensor, dict[str, float]]:
        loss = (self.nll * self.scored).sum() / self.scored.sum().clamp(min=1)
        return loss, {"nll": loss.detach().item()}

    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return torch.where(self.scored, self.logits.argmax(-1), batch.tokens), self.scored


@OBJECTIVES.register("any_order")
class AnyOrder(Objective):
    """Any-order autoregression (σ-GPT): the chain rule along a random permutation (see the
    module docstring)."""

    layout = Layout.CAUSAL
    extra_tokens = 1

    def __init__(
        self, *, order: str = "random", eval_orders: int = 1, position_scale: float = 0.1
    ) -> None:
        if order not in ("random", "identity"):
            raise ConfigError(f"any_order order must be 'random' or 'identity', got {order!r}")
        if eval_orders < 1:
            raise ConfigError(f"eval_orders must be >= 1, got {eval_orders}")
        self.order, self.eval_orders, self.position_scale = order, eval_orders, position_scale
        self.bound = order == "random"

    @property
    def bos_id(self) -> int:
        return self.vocab_size

    def permutation(self, batch: Batch, random: float | None = None) -> Tensor:
        """π `[B, L]`: unscored positions first (left to right), then the scored ones in a
        random order (one per sequence, from torch's generator) or left to right. `random`
        is the fraction of rows whose scored tokens are shuffled (default: all for
        `order="random"`, none for `"identity"`); each row is shuffled with that probability.
        """
        tokens = batch.tokens
        b, length = tokens.shape
        random = (1.0 if self.order == "random" else 0.0) if random is None else random
        index = torch.arange(length, device=tokens.device, dtype=torch.float64) / length
        rank = index.expand(b, -1)
        if random > 0:
            shuffled = torch.rand(b, length, dtype=torch.float64, device=tokens.device)
            if random < 1:
                rows = torch.rand(b, 1, dtype=torch.float64, device=tokens.device) < random
                shuffled = torch.where(rows, shuffled, rank)
            rank = shuffled
        keys = torch.where(scored_mask(batch), 1 + rank, index - 1)
        return keys.argsort(dim=1)

    def token_nll(self, model: Model, batch: Batch, order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """NLL of each token in order `[B, L]`, the scored mask in order, and the logits."""
        tokens = batch.tokens
        b = tokens.shape[0]
        targets = tokens.gather(1, order)
        bos = torch.full((b, 1), self.bos_id, dtype=tokens.dtype, device=tokens.device)
        inputs = torch.cat([bos, targets[:, :-1]], dim=1)
        current = torch.cat([torch.zeros_like(bos), order[:, :-1] + 1], dim=1)
        width, dtype = embedding_shape(model)
        encoding = torch.cat(
            [sinusoid(current, width // 2), sinusoid(order + 1, width - width // 2)], dim=-1
        )
        logits, _ = model(
            inputs,
            layout=self.layout,
            positions=current,
            input_embeddings=(self.position_scale * encoding).to(dtype),
        )
        logits = logits[..., : self.vocab_size]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return nll.view_as(targets), scored_mask(batch).gather(1, order), logits

    def scores(self, model: Model, batch: Batch) -> Scores:
        """One draw of the factorisation, aligned with `batch.tokens`."""
        order = self.permutation(batch)
        nll, scored, logits = self.token_nll(model, batch, order)
        back = order.argsort(dim=1)
        return Scores(
            nll.gather(1, back),
            scored.gather(1, back),
            logits.gather(1, back[..., None].expand_as(logits)),
        )

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return self.scores(model, batch).loss()

    @torch.no_grad()
    def nll(self, model: Model, batch: Batch) -> NLL:
        """−log p_π(x) of the scored tokens, averaged over `eval_orders` draws when the
        order is random."""
        draws = self.eval_orders if self.bound else 1
        nats, count = 0.0, 0
        for _ in range(draws):
            scores = self.scores(model, batch)
            nats += float((scores.nll.double() * scores.scored).sum())
            count = int(scores.scored.sum())
        return NLL(nats / draws, count, bound=self.bound)

    @torch.no_grad()
    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Teacher-forced argmax along one order, at the original positions."""
        return self.scores(model, batch).predict(batch)

    @torch.no_grad()
    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Greedy decoding along the left-to-right order (the context first, then the scored
        positions left to right): one pass per scored token, each committing the argmax at
        the next scored position from the context and the tokens decoded before it."""
        scored = scored_mask(batch)
        x = batch.tokens.masked_fill(scored, 0)
        order = self.permutation(Batch(x, scored), random=0.0)
        context, counts = (~scored).sum(1), scored.sum(1)
        last = x.shape[1] - 1
        for k in range(int(counts.max())):
            logits = self.token_nll(model, Batch(x, scored), order)[2]
            step = (context + k).clamp(max=last)[:, None]
            guess = logits.gather(1, step[..., None].expand(-1, -1, logits.shape[-1])).argmax(-1)
            position = order.gather(1, step)
            live = (k < counts)[:, None]
            x = x.scatter(1, position, torch.where(live, guess, x.gather(1, position)))
        return x, scored
