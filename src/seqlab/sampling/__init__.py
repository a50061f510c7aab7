"""Decoders, one or a few per module; the registry (`seqlab.registry.SAMPLERS`) finds them by
importing every module of this package on first lookup.

A new sampler is one function in one module here (or anywhere, named by its import path):
`@SAMPLERS.register("name")` over `@shares(...)` (the shared options it takes, see
`seqlab.sampling.base`), or `@diffusion_sampler(...)` over the function building its rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from seqlab.errors import SeqlabError, ShapeError
from seqlab.model import Model
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import Generation, as_prompt
from seqlab.sampling.base import SamplingOptions, eval_mode

__all__ = ["Generation", "SamplingOptions", "generate"]


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

    The model (and any model among the options, e.g. a draft) samples in eval mode; each
    gets its own training mode back when sampling returns or raises.
    """
    if max_new_tokens < 0:
        raise SeqlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = as_prompt(prompt, model.device)
    entry = SAMPLERS.get(sampler)
    if not isinstance(prompt, Tensor) and entry.declared("paradigm") != "ar":
        lengths = sorted({p.numel() for p in prompt})
        raise ShapeError(f"sampler {sampler!r} needs prompts of one length, got {lengths}")
    modules = [v for v in options.values() if isinstance(v, nn.Module)]
    with eval_mode(model, *modules):
        return entry.build(model, prompt, max_new_tokens, **options)
