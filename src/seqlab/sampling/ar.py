"""Autoregressive decoding: prefill the prompt through the model's state, then one token
per forward pass (the KV cache or the recurrent state carries the context)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seqlab.errors import ShapeError
from seqlab.model import Model
from seqlab.registry import SAMPLERS
from seqlab.sampling.processors import LogitsProcessor, apply_processors, sampling_processors


@dataclass
class Generation:
    """`tokens [B, T_prompt + T_new]` (prompt included); `nfe` model forward passes;
    `seconds` wall time."""

    tokens: Tensor
    nfe: int
    seconds: float


def as_prompt(prompt: Tensor | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    if not isinstance(prompt, Tensor):
        lengths = {len(p) for p in prompt}
        if len(lengths) != 1:
            raise ShapeError(f"prompts must share one length here, got lengths {sorted(lengths)}")
        prompt = torch.tensor([list(p) for p in prompt], dtype=torch.long)
    if prompt.dim() == 1:
        prompt = prompt[None]
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ShapeError(f"prompt must have shape [B, T] with T >= 1, got {list(prompt.shape)}")
    return prompt.to(device=device, dtype=torch.long)


def categorical(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from softmax(logits), computed in float64."""
    probs = logits.double().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def decode(
    model: Model,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    greedy: bool,
    processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | None = None,
) -> Generation:
    start = time.perf_counter()
    model.eval()
    tokens = prompt
    logits, state = model(prompt, model.init_state(prompt.shape[0]))
    nfe = 1
    for i in range(max_new_tokens):
        scores = apply_processors(processors, tokens, logits[:, -1].float())
        nxt = scores.argmax(dim=-1) if greedy else categorical(scores, generator)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if i + 1 < max_new_tokens:
            logits, state = model(nxt[:, None], state)
            nfe += 1
    return Generation(tokens, nfe, time.perf_counter() - start)


@SAMPLERS.register("greedy", description="argmax at every step", paradigm="ar")
def greedy(
    model: Model, prompt: Tensor, max_new_tokens: int, *, processors: Sequence[LogitsProcessor] = ()
) -> Generation:
    return decode(model, prompt, max_new_tokens, greedy=True, processors=processors)


@SAMPLERS.register(
    "sample", description="ancestral sampling with temperature/top-k/top-p", paradigm="ar"
)
def sample(
    model: Model,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    processors: Sequence[LogitsProcessor] = (),
) -> Generation:
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    chain = sampling_processors(temperature, top_k, top_p) + list(processors)
    return decode(
        model, prompt, max_new_tokens, greedy=False, processors=chain, generator=generator
    )
