"""The adaptive correction sampler (`acs`) of Fathi et al. (2025), "Unifying Autoregressive
and Diffusion-Based Sequence Generation".

Each step is the objective's ancestral step (`ancestral_rule`: masks unmasked on the
schedule; under hybrid noise decoded tokens may already move), followed by a correction of
the positions decoded before the step: where the denoiser's current prediction disagrees
with the token and is confident,

    x_i ← argmax_v x̂_0(v)   if x_i was decoded, argmax_v x̂_0(v) ≠ x_i and max_v x̂_0(v) > τ,

the token is replaced by the prediction (corrected in place, no extra model call: the
prediction is the step's own x̂_0). The correction needs a denoiser that predicts clean
positions too, as the hybrid (ε/γ) objectives train it to; under pure absorbing noise the
prediction at a decoded position is whatever the denoiser outputs there. τ = `threshold`;
τ ≥ 1 turns correction off, and the sampler is then `ancestral`, draw for draw. Under a
non-flat hyperschedule the ancestral step follows each position's levels, and only
positions inside their ramp at this step are corrected: one still at pure noise is not yet
decoded, one already committed (τ = 0) stays.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.registry import SAMPLERS
from seqlab.sampling.diffusion import Rule, RuleInputs, ancestral_rule, diffusion_sampler


def corrections(
    tokens: Tensor, probs: Tensor, free: Tensor, mask_id: int, threshold: float
) -> tuple[Tensor, Tensor]:
    """The decoded `free` positions `[B, n]` whose x̂_0 `probs` `[B, n, N]` puts more than
    `threshold` on another token than theirs, and that token `[B, n]`."""
    confidence, predicted = probs.max(-1)
    decoded = free & (tokens != mask_id)
    return decoded & (predicted != tokens) & (confidence > threshold), predicted


def acs_rule(inputs: RuleInputs, threshold: float) -> Rule:
    """The ancestral step, then decoded tokens replaced where x̂_0 confidently disagrees."""
    objective = inputs.objective
    step_rule = ancestral_rule(
        objective, inputs.generator, inputs.guidance, temperature=inputs.temperature
    )
    mask_id = objective.mask_id

    def rule(
        tokens: Tensor,
        probs: Tensor,
        free: Tensor,
        step: int,
        steps: int,
        levels: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        new = step_rule(tokens, probs, free, step, steps, levels)
        if threshold >= 1:
            return new
        if levels is not None:
            free = free & (levels[1] < levels[0])
        fix, predicted = corrections(tokens, probs, free, mask_id, threshold)
        return torch.where(fix, predicted, new)

    return rule


@SAMPLERS.register("acs")
@diffusion_sampler(
    stop_when_clean=lambda objective: objective.noise == "absorbing", hyperschedule=True
)
def acs(inputs: RuleInputs, *, threshold: float = 0.9) -> Rule:
    """Adaptive correction (Fathi et al., 2025): ancestral steps, and after each a decoded
    token is replaced by the denoiser's prediction where that prediction differs and its
    probability exceeds `threshold` (>= 1: off, the `ancestral` sampler)."""
    if threshold < 0:
        raise ConfigError(
            f"acs threshold must be >= 0 (>= 1 turns correction off), got {threshold}"
        )
    return acs_rule(inputs, threshold)
