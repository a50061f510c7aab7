"""Infilling with an any-subset (A3) model: the unknown positions are drawn group by group.

`infill` fills every position whose `known` flag is False, k at a time: each step runs the
two-stream pass of `objectives.any_subset` with the known tokens as context (chunks of k,
left to right, as in training), the groups drawn so far after them, and the next k unknown
positions (left to right, or in a random order) as the query group, then draws those k
tokens in parallel. That is ancestral sampling from exactly the factorisation `nll` scores
for that order and grouping: k = 1 is one token at a time, k = None all at once (one
forward pass). Every step is a full pass (no cache): ⌈unknown / k⌉ forward passes.

The registered sampler `any_subset` continues a prompt this way (known = the prompt);
`infill` takes any pattern of known positions.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from seqlab.errors import ConfigError, ShapeError
from seqlab.model import Model
from seqlab.objectives import build_objective
from seqlab.objectives.any_subset import AnySubset, ceil_div
from seqlab.objectives.base import Objective
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import Generation, pad_rows, prompt_rows
from seqlab.sampling.base import SamplingOptions, in_eval_mode, seed_generator, shares
from seqlab.sampling.diffusion import draw

ORDERS = ("left_to_right", "random")


def any_subset_objective(model: Model, objective: Objective | str | None) -> AnySubset:
    """The objective the model was trained with (default: `any_subset` with its defaults),
    bound to the model's data vocabulary."""
    if objective is None or isinstance(objective, str):
        objective = build_objective(objective or "any_subset")
    if not isinstance(objective, AnySubset):
        raise ConfigError(f"the any_subset sampler needs an any_subset objective, got {objective}")
    if objective.vocab_size is None:
        objective.bind(model.config.vocab_size - objective.extra_tokens)
    return objective


@torch.no_grad()
@in_eval_mode
def infill(
    model: Model,
    tokens: Tensor,
    known: Tensor,
    *,
    objective: AnySubset,
    group_size: int | None = 1,
    order: str = "left_to_right",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """`tokens [B, L]` with the positions where `known [B, L]` is False drawn k =
    `group_size` at a time (None: all at once) in `order`; temperature 0 takes the argmax.
    Returns the filled tokens and the number of forward passes."""
    if known.shape != tokens.shape:
        raise ShapeError(f"known must have the tokens' shape {list(tokens.shape)}")
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if group_size is not None and group_size < 1:
        raise ConfigError(f"group_size must be >= 1 (or None: all at once), got {group_size}")
    b, length = tokens.shape
    unknown = ~known
    missing = unknown.sum(1, keepdim=True)
    size = max(1, int(missing.max())) if group_size is None else group_size
    if order == "random":
        key = torch.rand(b, length, generator=generator, device=tokens.device)
    else:
        key = torch.arange(length, device=tokens.device, dtype=torch.float64).expand(b, -1)
    key = key.double().masked_fill(known, torch.inf)
    draw_group = key.argsort(1).argsort(1) // size  # which step draws each unknown position
    context = torch.where(known, (known.cumsum(1) - 1) // size, -1)
    first = ceil_div(known.sum(1, keepdim=True), size)
    x = tokens.masked_fill(unknown, 0)
    steps = int(ceil_div(missing.max(), size))
    for step in range(steps):
        groups = torch.where(unknown & (draw_group <= step), first + draw_group, context)
        logits = objective.grouped_logits(model, x, groups, size).double()
        if temperature > 0:
            choice = draw((logits / temperature).softmax(-1), generator)
        else:
            choice = logits.argmax(-1)
        x = torch.where(unknown & (draw_group == step), choice, x)
    return x, steps


@SAMPLERS.register("any_subset")
@shares("temperature", "seed", "objective", "pad_id")
def any_subset(
    model: Model,
    prompt: Tensor | list[Tensor],
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    group_size: int | None = 1,
    order: str = "left_to_right",
) -> Generation:
    """A3 decoding: the new tokens drawn `group_size` at a time (None: all at once), left to
    right or in a random `order`, each group in parallel from the two-stream pass."""
    start = time.perf_counter()
    objective = any_subset_objective(model, options.objective)
    generator = seed_generator(model, options.seed, "any_subset")
    rows = prompt_rows(prompt)
    groups = [prompt] if isinstance(prompt, Tensor) else [row[None] for row in rows]
    outputs, nfe = [], 0
    for part in groups:
        tokens = torch.cat([part, part.new_zeros(part.shape[0], max_new_tokens)], dim=1)
        known = torch.zeros_like(tokens, dtype=torch.bool)
        known[:, : part.shape[1]] = True
        filled, passes = infill(
            model,
            tokens,
            known,
            objective=objective,
            group_size=group_size,
            order=order,
            temperature=options.temperature,
            generator=generator,
        )
        outputs.extend(filled.tolist())
        nfe += passes
    lengths = torch.tensor([len(r) for r in outputs], device=model.device)
    out = pad_rows(outputs, options.pad_id, model.device)
    return Generation(out, nfe, time.perf_counter() - start, lengths=lengths)
