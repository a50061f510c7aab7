"""Insertion language models (ILM; Patel et al., 2025): generate by inserting one token at a
time anywhere, choosing the slot and the token jointly, until the model chooses to stop.

A state is a sequence s (the context, the unscored tokens, plus the scored tokens inserted
so far); its slots are the gaps in it: slot j lies after its first j tokens (slot 0 is the
start). The model reads [START, s] bidirectionally and its output at position j scores the
tokens to insert in slot j: one softmax over every (open slot j, data token v) pair and the
stop action together,

    p(j, v | s) = exp(ℓ_j[v]) / Z,   p(stop | s) = exp(ℓ_0[START]) / Z,
    Z = Σ_{j open} Σ_{v < N} exp(ℓ_j[v]) + exp(ℓ_0[START]).

Head: the model's own vocabulary head gives every ℓ_j; one extra id, START = N (the data
vocabulary size), is fed at position 0 and its logit there is the stop logit, so no head is
added and the model interface is unchanged (ℓ_j[START] at j > 0 is unused). One softmax with
stop inside it is the paper's factorised loss exactly: −log p(j, v) = −log(1 − p(stop))
− log p(j, v | not stop), its stop classifier's binary cross-entropy plus its insertion
cross-entropy.

Open slots: nothing is ever inserted inside the context, so a slot is open when it may
receive scored tokens: the slot after a scored token, the slot after a context token that
precedes a scored position, and the start when position 0 is scored. From a prompt (a context
prefix) that is the slot after the prompt and every slot after an inserted token.

Training (the paper's denoising objective): draw m uniformly in {0, …, n} (n scored tokens),
drop a uniformly random m of the scored tokens, and score the kept state: each dropped token
is the action (the slot it falls in, its token), so each slot's target is the multiset of the
dropped tokens that follow it, and

    ℓ_m = −(1/m) Σ_{dropped d} log p(slot(d), x_d | s)   (m > 0),   ℓ_0 = −log p(stop | x).

The loss is the mean of ℓ_m over the batch. All rows share one drop fraction r ~ U[0, 1)
per batch (m_b = ⌊r (n_b + 1)⌋), so rows with the same counts keep the same length and run
as one model call (a bidirectional model has no padding mask: rows of different lengths run
in separate calls).

Bound. Inserting the scored tokens in the order π gives a distinct action sequence for each
π (an action fixes the index of the new token, so the last action names a position of x,
and so on backwards), so p(x) ≥ Σ_π Π_k p(a_k(π) | s_{k−1}) · p(stop | x), and with π
uniform (Jensen)

    −log p(x_S | x_U) ≤ Σ_{m=0}^{n} E[ℓ_m] − log n! = (n + 1) E_{m ~ U{0..n}}[ℓ_m] − log n!,

since the state before the k-th insertion keeps a uniformly random k − 1 of the scored
tokens and the next one is a uniformly random one of the m = n − k + 1 dropped. `nll`
estimates it with `eval_samples` passes at stratified drop counts (eval_samples = n + 1 hits
every m once), in nats per scored token, reported as a bound ("≤").

Predictions (`predict`) are greedy insertion decoding from the context with at most n
insertions: the model's own answer, not a teacher-forced one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import NLL, Batch, Objective, scored_mask
from seqlab.registry import OBJECTIVES


@dataclass
class Canvas:
    """Rows of variable length: `tokens [B, W]` (row b valid up to `lengths[b]`, the rest
    filler) and `open [B, W + 1]`, the slots that may receive a token (slot j: after the
    row's first j tokens; False past the row's length)."""

    tokens: Tensor
    lengths: Tensor
    open: Tensor

    @classmethod
    def from_prompt(cls, prompt: Tensor) -> Canvas:
        """A batch of equal-length prompts `[B, T]`: only the slot after the prompt is open."""
        b, t = prompt.shape
        open_ = torch.zeros(b, t + 1, dtype=torch.bool, device=prompt.device)
        open_[:, t] = True
        return cls(prompt.clone(), torch.full((b,), t, device=prompt.device), open_)

    def rows(self, index: Tensor) -> Canvas:
        return Canvas(self.tokens[index], self.lengths[index], self.open[index])

    def insert(self, slot: Tensor, token: Tensor, active: Tensor) -> Canvas:
        """Insert `token[b]` in slot `slot[b]` of every row where `active[b]` (`[B]` each):
        the new token lands at index slot, and the slots on both sides of it are open."""
        width = self.tokens.shape[1]
        grown = max(width, int((self.lengths + active.long()).max()))
        tokens = F.pad(self.tokens, (0, grown - width))
        open_ = F.pad(self.open, (0, grown - width))
        index = torch.arange(grown, device=tokens.device)[None]
        j = slot[:, None]
        shifted = tokens.gather(1, torch.where(index <= j, index, index - 1))
        shifted = torch.where(index == j, token[:, None], shifted)
        slots = torch.arange(grown + 1, device=tokens.device)[None]
        moved = open_.gather(1, torch.where(slots <= j, slots, slots - 1)) | (slots == j + 1)
        keep = ~active[:, None]
        return Canvas(
            torch.where(keep, tokens, shifted),
            self.lengths + active.long(),
            torch.where(keep, open_, moved),
        )


@dataclass
class Drop:
    """Scored tokens dropped from a batch: the kept `canvas`, which positions were `dropped`
    `[B, L]`, the slot of the canvas each dropped token falls in (`slots [B, L]`, −1 where
    kept) and the count per row (`counts [B]`)."""

    canvas: Canvas
    dropped: Tensor
    slots: Tensor
    counts: Tensor

    @classmethod
    def from_mask(cls, tokens: Tensor, scored: Tensor, dropped: Tensor, filler: int) -> Drop:
        """Drop the positions `dropped` (a subset of `scored`, `[B, L]` each) from `tokens`."""
        length = tokens.shape[1]
        kept = ~dropped
        before = kept.long().cumsum(1) - kept.long()  # kept tokens before each position
        slots = torch.where(dropped, before, -1)
        index = torch.arange(length, device=tokens.device)
        order = (dropped.long() * length + index).argsort(1)  # kept positions first, in order
        lengths = kept.sum(1)
        valid = index[None] < lengths[:, None]
        canvas_tokens = torch.where(valid, tokens.gather(1, order), filler)
        # open after position p: p is scored, or the next position is; the start: 0 is scored
        after = scored | F.pad(scored[:, 1:], (0, 1))
        open_ = torch.cat([scored[:, :1], after.gather(1, order) & valid], dim=1)
        return cls(Canvas(canvas_tokens, lengths, open_), dropped, slots, dropped.sum(1))

    @classmethod
    def draw(cls, tokens: Tensor, scored: Tensor, counts: Tensor, filler: int) -> Drop:
        """Drop a uniformly random `counts[b]` of row b's scored positions (torch's RNG)."""
        keys = torch.where(
            scored, torch.rand(tokens.shape, dtype=torch.float64, device=tokens.device), 2.0
        )
        rank = keys.argsort(1).argsort(1)
        return cls.from_mask(tokens, scored, rank < counts[:, None], filler)


def joint_log_probs(
    model: Model, canvas: Canvas, vocab_size: int, layout: Layout = Layout.BIDIRECTIONAL
) -> tuple[Tensor, Tensor]:
    """log p(j, v | s) `[B, W + 1, N]` (−inf at closed slots) and log p(stop | s) `[B]`.

    Row b reads [START, s_b] (START = N = `vocab_size`) in one model call per distinct row
    length. Float32, or float64 for a float64 model."""
    b, width = canvas.tokens.shape
    start = torch.full((b, 1), vocab_size, dtype=torch.long, device=canvas.tokens.device)
    parts, order = [], []
    for n in canvas.lengths.unique().tolist():
        index = (canvas.lengths == n).nonzero().squeeze(1)
        inputs = torch.cat([start[index], canvas.tokens[index, :n]], dim=1)
        logits = model(inputs, layout=layout)[0]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        parts.append(F.pad(logits, (0, 0, 0, width - n)))
        order.append(index)
    logits = torch.cat(parts)[torch.cat(order).argsort()]
    scores = logits[..., :vocab_size].masked_fill(~canvas.open[..., None], -torch.inf)
    stop = logits[:, 0, vocab_size]
    log_z = torch.logsumexp(torch.cat([scores.flatten(1), stop[:, None]], dim=1), dim=1)
    return scores - log_z[:, None, None], stop - log_z


def flat_scores(slot_log_probs: Tensor, stop_log_prob: Tensor) -> Tensor:
    """The joint as one row of scores `[B, (W + 1)·N + 1]`: (slot j, token v) at j·N + v,
    stop last."""
    return torch.cat([slot_log_probs.flatten(1), stop_log_prob[:, None]], dim=1)


# A choice rule: flat joint log-probabilities [A, (W + 1)·N + 1] of the A rows still
# inserting, their canvas and their indices in the batch [A] -> one action index per row.
Choose = Callable[[Tensor, Canvas, Tensor], Tensor]


def greedy_choice(scores: Tensor, canvas: Canvas, rows: Tensor) -> Tensor:
    return scores.argmax(dim=1)


@torch.no_grad()
def decode(
    model: Model, canvas: Canvas, budget: Tensor, vocab_size: int, choose: Choose = greedy_choice
) -> tuple[Canvas, int]:
    """Insert one chosen (slot, token) per row and step until the row chooses stop or has
    inserted `budget[b]` tokens. Returns the final canvas and the model calls made."""
    done = budget <= 0
    inserted = torch.zeros_like(budget)
    calls = 0
    while not bool(done.all()):
        active = (~done).nonzero().squeeze(1)
        rows = canvas.rows(active)
        calls += int(rows.lengths.unique().numel())
        slot_lp, stop_lp = joint_log_probs(model, rows, vocab_size)
        action = choose(flat_scores(slot_lp, stop_lp), rows, active)
        stop = action == slot_lp.shape[1] * vocab_size
        slot = torch.zeros_like(canvas.lengths).index_put((active,), action // vocab_size)
        token = torch.zeros_like(canvas.lengths).index_put((active,), action % vocab_size)
        go = torch.zeros_like(done).index_put((active,), ~stop)
        canvas = canvas.insert(slot, token, go)
        inserted = inserted + go.long()
        done = done | ~go | (inserted >= budget)
    return canvas, calls


@OBJECTIVES.register("insertion")
class Insertion(Objective):
    """Insertion language model (ILM): a joint softmax over (slot, token) and stop, trained
    by dropping random scored tokens; the NLL is a bound (see the module docstring)."""

    bound = True
    layout = Layout.BIDIRECTIONAL
    paradigm = "insertion"
    stops_early = True
    extra_tokens = 1

    def __init__(self, *, eval_samples: int = 16) -> None:
        if not isinstance(eval_samples, int) or eval_samples < 1:
            raise ConfigError(f"insertion eval_samples must be an integer >= 1, got {eval_samples}")
        self.eval_samples = eval_samples

    @property
    def start_id(self) -> int:
        """The extra id: fed at position 0 (the start slot); its logit there is stop's."""
        if self.vocab_size is None:
            raise SeqlabError("objective 'insertion' must be bound to a vocabulary first")
        return self.vocab_size

    def row_losses(self, model: Model, batch: Batch, drop: Drop) -> Tensor:
        """ℓ_m per row `[B]`: the mean −log p of the dropped actions, or −log p(stop)."""
        slot_lp, stop_lp = joint_log_probs(model, drop.canvas, self.start_id, self.layout)
        slots = drop.slots.clamp(min=0)
        taken = slot_lp[torch.arange(slots.shape[0])[:, None], slots, batch.tokens]
        inserted = -(taken.where(drop.dropped, 0.0)).sum(1) / drop.counts.clamp(min=1)
        return torch.where(drop.counts > 0, inserted, -stop_lp)

    def _bound(self, losses: Tensor, scored: Tensor) -> Tensor:
        """(n + 1)·ℓ − log n! per row `[B]`, in float64."""
        n = scored.sum(1).double()
        return (n + 1) * losses.double() - torch.lgamma(n + 1)

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        scored = scored_mask(batch)
        n = scored.sum(1)
        fraction = torch.rand((), dtype=torch.float64, device=n.device)
        counts = ((n + 1) * fraction).floor().long().clamp(max=n)
        drop = Drop.draw(batch.tokens, scored, counts, self.start_id)
        losses = self.row_losses(model, batch, drop)
        bound = self._bound(losses.detach(), scored).sum() / n.sum().clamp(min=1)
        return losses.mean().float(), {"nll_bound": bound.item()}

    @torch.no_grad()
    def nll(self, model: Model, batch: Batch) -> NLL:
        scored = scored_mask(batch)
        n = scored.sum(1)
        k = self.eval_samples
        offset = torch.rand((), dtype=torch.float64, device=n.device)
        mean = torch.zeros(n.shape, dtype=torch.float64, device=n.device)
        for i in range(k):
            counts = ((n + 1) * (i + offset) / k).floor().long().clamp(max=n)
            drop = Drop.draw(batch.tokens, scored, counts, self.start_id)
            mean += self.row_losses(model, batch, drop).double() / k
        return NLL(float(self._bound(mean, scored).sum()), int(n.sum()), bound=True)

    @torch.no_grad()
    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Greedy insertion decoding of the scored tokens into the context (at most as many
        as the row scores); the final sequence read against the row's positions (positions
        past its end hold the START id, which matches no token)."""
        scored = scored_mask(batch)
        n = scored.sum(1)
        context = Drop.from_mask(batch.tokens, scored, scored, self.start_id).canvas
        final, _ = decode(model, context, n, self.start_id)
        length = batch.tokens.shape[1]
        tokens = F.pad(final.tokens, (0, max(0, length - final.tokens.shape[1])))[:, :length]
        index = torch.arange(length, device=tokens.device)[None]
        tokens = torch.where(index < final.lengths[:, None], tokens, self.start_id)
        return torch.where(scored, tokens, batch.tokens), scored

    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """`predict`: greedy insertion decoding is already this paradigm's own generation."""
        return self.predict(model, batch)
