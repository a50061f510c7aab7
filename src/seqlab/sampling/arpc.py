"""BlockGen's AR-informed predictor-corrector (`arpc`, Deschenaux & Gulcehre, 2026).

A BlockGen model is a `block_diffusion` model trained on a mixture of block sizes
(`block_sizes`) that includes 1, so one network gives two predictions of every position i:

- the diffusion prediction p_diff(x_i), made while denoising the block of size b (the
  sampling `block_size`) on top of the clean prefix: the x̂_0 the predictor drew x_i from;
- the AR prediction p_AR(x_i | x_<i), block size 1: position i masked, reading the clean
  prefix including the block's earlier predicted tokens. All positions of a block come from
  one pass over [masks ; x_<end] under `Layout.block_diffusion(1)` (`BlockDiffusion.denoise`
  at block size 1, the training task).

Predictor: MDLM's ancestral steps (`ancestral_rule`) until the block is clean. Corrector,
`corrector_steps` times per block: score each new position of the block by

    s_i = KL(p_AR(· | x_<i) ‖ p_diff(x_i)) = Σ_v p_AR(v) (log p_AR(v) − log p_diff(v)),

re-mask the `remask` highest-scoring positions of each row, and run the predictor's steps
again (which records the new diffusion predictions of the re-decoded positions). Each
corrector step costs one AR pass (1 NFE) plus the predictor's passes. With
`corrector_steps = 0` this is the `ancestral` sampler, draw for draw.

Only a block-diffusion objective trained with block size 1 among its `block_sizes` can be
asked for both predictions (the block size is chosen at inference by the layout, so any
block-diffusion model *can* be run at size 1, but its prediction there is meaningless unless
it was trained there); anything else is refused with a ConfigError. Absorbing noise only:
the AR pass reads the position as the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.objectives.block import BlockDiffusion
from seqlab.registry import SAMPLERS
from seqlab.sampling.diffusion import (
    Context,
    Rule,
    RuleInputs,
    ancestral_rule,
    diffusion_sampler,
    kl_divergence,
    x0_probs,
)


def worst(scores: Tensor, free: Tensor, k: int) -> Tensor:
    """The `k` highest `scores` `[B, n]` among each row's `free` positions `[B, n]` (all of
    them when fewer), as a mask `[B, n]`; ties go to the earlier position."""
    scores = scores.masked_fill(~free, -torch.inf)
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    return free & (rank < k)


class ARPC:
    """The ARPC rule: the ancestral predictor, recording each position's x̂_0 when it is
    decoded, and the AR-informed corrector (`correct`, called by `denoise`)."""

    def __init__(self, inputs: RuleInputs, corrector_steps: int, remask: int) -> None:
        objective = inputs.objective
        self.model, self.temperature = inputs.model, inputs.temperature
        self.mask_id, self.vocab_size = objective.mask_id, objective.vocab_size
        self.predictor = ancestral_rule(
            objective, inputs.generator, inputs.guidance, temperature=inputs.temperature
        )
        self.ar = objective.with_block_size(1)  # type: ignore[attr-defined]
        self.corrector_steps, self.remask = corrector_steps, remask
        self.seen: Tensor | None = None  # the diffusion x̂_0 of each decoded position
        self.round = 0

    def __call__(
        self, tokens: Tensor, probs: Tensor, free: Tensor, step: int, steps: int
    ) -> Tensor:
        new = self.predictor(tokens, probs, free, step, steps)
        if self.seen is None or self.seen.shape != probs.shape:
            self.seen = torch.ones_like(probs) / probs.shape[-1]
        decoded = (tokens == self.mask_id) & (new != self.mask_id)
        self.seen = torch.where(decoded[..., None], probs, self.seen)
        return new

    def ar_probs(self, x: Tensor, start: int, end: int) -> Tensor:
        """p_AR `[B, end − start, N]` of the block [start, end) of the canvas `x` (one pass)."""
        clean = x[:, :end]
        logits = self.ar.denoise(self.model, torch.full_like(clean, self.mask_id), clean)
        return x0_probs(logits[:, start:end], self.vocab_size, self.temperature)

    def correct(
        self, x: Tensor, start: int, end: int, free: Tensor, context: Context
    ) -> Tensor | None:
        """The block with its `remask` worst positions re-masked, or None after
        `corrector_steps` rounds (the next block starts afresh)."""
        if self.round == self.corrector_steps or self.seen is None:
            self.round = 0
            return None
        self.round += 1
        context.nfe += 1
        scores = kl_divergence(self.ar_probs(x, start, end), self.seen)
        return x[:, start:end].masked_fill(worst(scores, free, self.remask), self.mask_id)


@SAMPLERS.register("arpc")
@diffusion_sampler(absorbing=True, stop_when_clean=True)
def arpc(inputs: RuleInputs, *, corrector_steps: int = 1, remask: int = 1) -> Rule:
    """BlockGen's AR-informed predictor-corrector: ancestral steps per block, then
    `corrector_steps` times re-mask the `remask` positions whose AR prediction (block size 1)
    diverges most (KL) from their diffusion prediction and denoise them again. Needs a
    `block_diffusion` objective trained with block size 1 among its `block_sizes`."""
    objective = inputs.objective
    if not isinstance(objective, BlockDiffusion) or 1 not in objective.block_sizes:
        sizes = getattr(objective, "block_sizes", None)
        raise ConfigError(
            f"arpc needs a block_diffusion objective trained with block size 1 among its "
            f"block_sizes (its AR predictions), got {objective.name!r} with block_sizes {sizes}"
        )
    if corrector_steps < 0:
        raise ConfigError(f"arpc corrector_steps must be >= 0, got {corrector_steps}")
    if remask < 1:
        raise ConfigError(f"arpc remask must be >= 1, got {remask}")
    return ARPC(inputs, corrector_steps, remask)
