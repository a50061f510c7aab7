"""Decoders, one or a few per module; the registry (`seqlab.registry.SAMPLERS`) finds them by
importing every module of this package on first lookup.

A new sampler is one function in one module here (or anywhere, named by its import path):
`@SAMPLERS.register("name")` over `@shares(...)` (the shared options it takes, see
`seqlab.sampling.base`), or `@diffusion_sampler(...)` over the function building its rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.model import Model
from seqlab.objectives.base import Objective
from seqlab.registry import OBJECTIVES, SAMPLERS, Entry
from seqlab.sampling.ar import Generation, as_prompt
from seqlab.sampling.base import SamplingOptions, eval_mode, refuse_value_head
from seqlab.sampling.hf_args import streaming, translate

__all__ = ["Generation", "SamplingOptions", "generate"]

# The most tokens one call generates: far beyond any context this library trains, and a
# guard against a typo that would otherwise allocate the whole continuation up front.
MAX_NEW_TOKENS = 1_000_000


def check_paradigm(entry: Entry, objective: Objective | str | None) -> None:
    """Refuse a decoder of another paradigm than the objective the model was trained with
    (the objective's `paradigm`: `"ar"`, `"diffusion"` or `"insertion"`; the sampler's
    declared one): an autoregressive sampler for a diffusion objective, and so on."""
    if objective is None:
        return
    if isinstance(objective, str):
        objective = OBJECTIVES.get(objective).target
    trained = objective.paradigm
    paradigm = entry.declared("paradigm")
    if trained != paradigm:
        kind = {"ar": "an autoregressive", "insertion": "an insertion"}.get(trained, f"a {trained}")
        fitting = [e.name for e in SAMPLERS.entries() if e.declared("paradigm") == trained]
        raise ConfigError(
            f"sampler {entry.name!r} decodes {paradigm}, but the model was trained with "
            f"{kind} objective ({objective.name!r}); samplers that fit it: {', '.join(fitting)}"
        )


def generate(
    model: Model,
    prompt: Tensor | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampler: str | None = None,
    **options: Any,
) -> Generation:
    """Continue `prompt` by up to `max_new_tokens` tokens with the named sampler.

    `prompt` is a `[B, T]` tensor of ids or a list of token lists, which may differ in length
    for the autoregressive samplers (each row then decodes exactly as that prompt alone).
    Samplers receive a `[B, T]` tensor, or (AR samplers only) a list of 1-D tensors when the
    lengths differ. `options` go to the sampler (for
    example `temperature`, `top_k`, `num_beams`, `draft_model`); `seqlab.list_samplers()`
    names them and an unknown option is an error listing the valid ones. Hugging Face's
    names (`do_sample`, `num_beam_groups`, `assistant_model`, `logits_processor`,
    `stopping_criteria`, `eos_token_id`, `pad_token_id`, `streamer`, ...) are aliases
    (`seqlab.sampling.hf_args`); with no `sampler` named, they choose it (default greedy).

    The model (and any model among the options, e.g. a draft) samples in eval mode; each
    gets its own training mode back when sampling returns or raises. A model with a value
    head is refused (`refuse_value_head`; `seqlab.sampling.marked.rollout_events` rolls it).
    """
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or not 0 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise SeqlabError(
            f"max_new_tokens must be an integer in [0, {MAX_NEW_TOKENS}], got {max_new_tokens!r}"
        )
    refuse_value_head(model)
    prompt = as_prompt(prompt, model.device)
    sampler, options, streamer = translate(sampler, options)
    entry = SAMPLERS.get(sampler)
    entry.check_options(options)
    check_paradigm(entry, options.get("objective"))
    if not isinstance(prompt, Tensor) and entry.declared("paradigm") != "ar":
        lengths = sorted({p.numel() for p in prompt})
        raise ShapeError(f"sampler {sampler!r} needs prompts of one length, got {lengths}")
    modules = [v for v in options.values() if isinstance(v, nn.Module)]
    with eval_mode(model, *modules), streaming(streamer, prompt):
        return entry.build(model, prompt, max_new_tokens, **options)
