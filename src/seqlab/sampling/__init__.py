"""Decoders; importing this package registers them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

import seqlab.sampling.diffusion  # noqa: F401  (registers the diffusion samplers)
from seqlab.model import Model
from seqlab.sampling import ar, beam, speculative  # noqa: F401  (register the samplers)
from seqlab.sampling.ar import Generation

__all__ = ["Generation", "generate"]


def generate(
    model: Model,
    prompt: Tensor | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampler: str = "greedy",
    **options: Any,
) -> Generation:
    """Continue `prompt` by up to `max_new_tokens` tokens with the named sampler.

    `prompt` is a `[B, T]` tensor of ids or a list of token lists, which may differ in length
    for the autoregressive samplers (each row then decodes exactly as that prompt alone).
    Samplers receive a `[B, T]` tensor, or (AR samplers only) a list of 1-D tensors when the
    lengths differ. `options` go to the sampler (for
    example `temperature`, `top_k`, `num_beams`, `draft_model`); `seqlab.list_samplers()`
    names them and an unknown option is an error listing the valid ones.
    """
    from seqlab.errors import SeqlabError, ShapeError
    from seqlab.registry import SAMPLERS, build_with_options

    if max_new_tokens < 0:
        raise SeqlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = ar.as_prompt(prompt, model.device)
    if not isinstance(prompt, Tensor) and SAMPLERS.get(sampler).meta.get("paradigm") != "ar":
        lengths = sorted({p.numel() for p in prompt})
        raise ShapeError(f"sampler {sampler!r} needs prompts of one length, got {lengths}")
    return build_with_options(SAMPLERS, sampler, model, prompt, max_new_tokens, **options)
