"""Any-order any-subset autoregression (A3; Du et al., 2026): the chain rule over groups.

    −log p_{π,G}(x) = −Σ_k Σ_{i ∈ G_k} log p(x_i | x_{G_1}, …, x_{G_{k−1}})

The scored positions, in the order π of `any_order` (the unscored context first, left to
right), are cut into consecutive groups G_k; a group is predicted from the groups before it,
its members in parallel and independently of each other. For a fixed order and grouping
this is an exact factorisation of a normalised distribution p_{π,G}; with random orders or
partitions `nll` scores one draw (averaged over `eval_orders`), an upper bound on the NLL of
the mixture over draws, and the objective declares `bound`.

Two-stream attention (XLNet) in the block-diffusion layout. Every group occupies a block of
b slots (b = the largest group; shorter groups and the context's last chunk are padded with
the query token), and the model reads the vectorised sequence [query ; content] of length
2·(number of groups)·b under `Layout.block_diffusion(b)`:

- content stream (second half): slot s holds token x_i at position i; its block (group)
  reads itself and the groups before it (block-causal), as XLNet's content stream reads
  itself and what precedes it;
- query stream (first half): slot s holds the query token (id `vocab_size`, no content) at
  position i, the target's position; its block reads the other queries of its group
  (positions only) and the content of the earlier groups, never its own group's content.

The logits of query slot s predict x_i. Positions reach the model twice, as rotary positions
and as a fixed sinusoidal input embedding (scaled by `position_scale`, for backbones without
rotary), shifted by one so padding sits at 0. Every mixer that declares the block-diffusion
layout (attention, and the recurrent ones through `scan_in_layout`) runs it exactly. Context
tokens are read in chunks of b in natural order (block-causal among themselves); every query
reads all of them.

Group size 1 in left-to-right order predicts x_i from a causal pass over [x_<i, QUERY@i]:
the count-estimator chain rule of `block_diffusion` with block size 1 (same ids, positions
shifted by one, which rotary attention does not see), not the `ar` objective, which reads
x_i off x_{i−1}'s output. Groups of the whole sequence are one-step masked prediction.

Curriculum (`curriculum_steps` > 0, the paper's progressive adaptation from AR): the
objective reads the trainer's step (`Objective.set_step`); at progress p = step /
curriculum_steps the group size grows linearly from 1 to its target over the first half,
1 + round(min(2p, 1)·(b − 1)), in left-to-right order, and over the second half a fraction
max(2p − 1, 0) of the rows is shuffled (random order only). At p ≥ 1, and in `nll` and
`predict` always, the configured grouping is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.auxiliary import record_metric
from seqlab.errors import ConfigError, ShapeError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.any_order import AnyOrder, Scores, embedding_shape, sinusoid
from seqlab.objectives.base import Batch, scored_mask
from seqlab.registry import OBJECTIVES

DEFAULT_GROUP_SIZE = 4


def ceil_div(a: Tensor, b: int) -> Tensor:
    return -(-a // b)


def slot_of(groups: Tensor, size: int) -> tuple[Tensor, int]:
    """Each position's slot `[B, L]` (its group · `size` + its rank among the group's
    positions, left to right) and the number of slots, (max group + 1) · `size`. Absent
    positions (group −1) get the slot one past the last."""
    length = groups.shape[1]
    index = torch.arange(length, device=groups.device)
    present = groups >= 0
    key = torch.where(present, groups * length + index, -1)
    order = key.argsort(dim=1)
    sorted_groups = groups.gather(1, order).contiguous()
    first = torch.searchsorted(sorted_groups, sorted_groups)
    within = torch.empty_like(groups).scatter(1, order, index - first)
    slots = (int(groups.max()) + 1) * size if bool(present.any()) else size
    if bool((within[present] >= size).any()):
        raise ShapeError(f"a group holds more than {size} positions")
    return torch.where(present, groups * size + within, slots), slots


@OBJECTIVES.register("any_subset")
class AnySubset(AnyOrder):
    """Any-order any-subset autoregression (A3): groups predicted one after another, in
    parallel within a group, by two-stream attention (see the module docstring).

    `group_size` tokens per group (default 4), or `groups` groups per row (of
    ⌈scored / groups⌉ tokens); `partition="random"` draws every group's size uniformly from
    1..group_size instead, per row; `order` as in `any_order`; `curriculum_steps` anneals
    from left-to-right groups of 1 to the configured grouping."""

    layout = Layout.block_diffusion(1)  # the block size is each batch's group size
    extra_tokens = 1

    def __init__(
        self,
        *,
        order: str = "random",
        group_size: int | None = None,
        groups: int | None = None,
        partition: str = "fixed",
        curriculum_steps: int = 0,
        eval_orders: int = 1,
        position_scale: float = 0.1,
    ) -> None:
        super().__init__(order=order, eval_orders=eval_orders, position_scale=position_scale)
        if group_size is not None and groups is not None:
            raise ConfigError(f"give group_size or groups, not both (got {group_size}, {groups})")
        if group_size is not None and group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {group_size}")
        if groups is not None and groups < 1:
            raise ConfigError(f"groups must be >= 1, got {groups}")
        if partition not in ("fixed", "random"):
            raise ConfigError(f"partition must be 'fixed' or 'random', got {partition!r}")
        if curriculum_steps < 0:
            raise ConfigError(f"curriculum_steps must be >= 0, got {curriculum_steps}")
        if groups is None and group_size is None:
            group_size = DEFAULT_GROUP_SIZE
        self.group_size, self.groups, self.partition = group_size, groups, partition
        self.curriculum_steps = curriculum_steps
        self.bound = order == "random" or partition == "random"

    @property
    def query_id(self) -> int:
        return self.vocab_size

    def curriculum(self, step: int | None = None) -> tuple[float, float]:
        """(grow, shuffle) at `step` (default: the trainer's): how far the group size has
        grown from 1 towards its target, and the fraction of rows in random order."""
        step = self.step if step is None else step
        progress = 1.0
        if self.curriculum_steps > 0 and step is not None:
            progress = min(step / self.curriculum_steps, 1.0)
        shuffle = max(2 * progress - 1, 0.0) if self.order == "random" else 0.0
        return min(2 * progress, 1.0), shuffle

    def target_size(self, batch: Batch) -> int:
        """The configured group size for this batch."""
        if self.groups is None:
            return self.group_size
        return max(1, int(ceil_div(scored_mask(batch).sum(1).max(), self.groups)))

    def grouping(
        self, batch: Batch, grow: float = 1.0, shuffle: float | None = None
    ) -> tuple[Tensor, int]:
        """Group index of every position `[B, L]` and the group size b: the unscored context
        in chunks of b (left to right), then the scored tokens along `permutation` in groups
        of b (or of random sizes in 1..b)."""
        size = 1 + round(grow * (self.target_size(batch) - 1))
        rank = self.permutation(batch, shuffle).argsort(dim=1)
        scored = scored_mask(batch)
        n_context = (~scored).sum(1, keepdim=True)
        scored_rank = (rank - n_context).clamp(min=0)
        if self.partition == "random" and size > 1:
            sizes = torch.randint(1, size + 1, rank.shape, device=rank.device)
            within = torch.searchsorted(sizes.cumsum(1), scored_rank, right=True)
        else:
            within = scored_rank // size
        return torch.where(scored, ceil_div(n_context, size) + within, rank // size), size

    def grouped_logits(self, model: Model, tokens: Tensor, groups: Tensor, size: int) -> Tensor:
        """Logits `[B, L, V]` (data vocabulary) of every position from the two-stream pass:
        position i is predicted from the groups before `groups[i]`. Positions with group −1
        are absent (not read by anyone); their logits are meaningless."""
        b, length = tokens.shape
        slot, slots = slot_of(groups, size)
        position = torch.arange(1, length + 1, device=tokens.device).expand(b, -1)
        pad = torch.full((b, slots + 1), self.query_id, dtype=tokens.dtype, device=tokens.device)
        content = pad.scatter(1, slot, tokens)[:, :slots]
        where = torch.zeros_like(pad).scatter(1, slot, position)[:, :slots]
        inputs = torch.cat([pad[:, :slots], content], dim=1)
        positions = torch.cat([where, where], dim=1)
        width, dtype = embedding_shape(model)
        logits, _ = model(
            inputs,
            layout=Layout.block_diffusion(size),
            positions=positions,
            input_embeddings=(self.position_scale * sinusoid(positions, width)).to(dtype),
        )
        logits = logits[:, :slots, : self.vocab_size]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        index = slot.clamp(max=slots - 1)[..., None].expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index)

    def scores(
        self, model: Model, batch: Batch, grow: float = 1.0, shuffle: float | None = None
    ) -> Scores:
        groups, size = self.grouping(batch, grow, shuffle)
        logits = self.grouped_logits(model, batch.tokens, groups, size)
        nll = F.cross_entropy(logits.flatten(0, 1), batch.tokens.flatten(), reduction="none")
        return Scores(nll.view_as(batch.tokens), scored_mask(batch), logits)

    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Greedy A3 decoding (`sampling.any_subset.infill`, temperature 0): the scored
        positions left to right in groups of the configured size, the unscored context first:
        the factorisation `nll` scores in left-to-right order."""
        from seqlab.sampling.any_subset import infill  # the sampler imports this module

        scored = scored_mask(batch)
        filled, _ = infill(
            model,
            batch.tokens,
            ~scored,
            objective=self,
            group_size=self.target_size(batch),
            temperature=0.0,
        )
        return filled, scored

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        grow, shuffle = self.curriculum()
        if self.curriculum_steps > 0:  # logged by the trainer (see seqlab.auxiliary)
            record_metric(model, "group_size", 1 + round(grow * (self.target_size(batch) - 1)))
            record_metric(model, "shuffled", shuffle)
        return self.scores(model, batch, grow, shuffle).loss()
