"""Decoders; importing this package registers them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from seqlab.model import Model
from seqlab.sampling import ar
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
    """Continue `prompt` (`[B, T]` ids) by `max_new_tokens` tokens with the named sampler."""
    from seqlab.errors import SeqlabError
    from seqlab.registry import SAMPLERS, build_with_options

    if max_new_tokens < 0:
        raise SeqlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = ar.as_prompt(prompt, model.device)
    return build_with_options(SAMPLERS, sampler, model, prompt, max_new_tokens, **options)
