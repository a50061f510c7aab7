"""Autoregressive decoding: prefill the prompt through the model's state, then one token
per forward pass (the KV cache or the recurrent state carries the context).

Shared machinery for every AR decoder lives here: prompts of different lengths (each length
group is prefilled on its own and the row states are stacked, so a row's output equals that
prompt decoded alone), seeded categorical draws, stop criteria, streaming, and the padded
`Generation` result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seqlab.errors import ConfigError, ShapeError
from seqlab.model import Model
from seqlab.ops.kv_cache.base import init_bounded_state
from seqlab.registry import SAMPLERS
from seqlab.sampling.base import (
    FILTERS,
    MEMORY,
    OUTPUT,
    PROCESSING,
    SamplingOptions,
    StopCriteria,
    Stream,
    in_eval_mode,
    shares,
)
from seqlab.sampling.processors import LogitsProcessor, apply_processors
from seqlab.sampling.state import State, merge_rows

Prompt = Tensor | Sequence[Tensor]


@dataclass
class Generation:
    """The result of `generate`.

    `tokens [B, T]`: the best continuation of each prompt, prompt included. Row i is valid up
    to `lengths[i]`; the rest holds `pad_id` (the sampler option, 0 by default).
    `nfe`: forward passes of the (target) model; `seconds`: wall time.
    `sequences [B, n, T]` and `scores [B, n]`: the n best hypotheses of n-best samplers (beam
    search), best first, with their length-penalised log-probabilities; None otherwise.
    `acceptance`: accepted / proposed draft tokens of speculative decoding, and
    `tokens_per_forward`: the tokens each row gained per forward pass of the model, prefill
    included (1.0 for greedy decoding of one prompt; more when drafts are accepted); None
    otherwise.
    """

    tokens: Tensor
    nfe: int
    seconds: float
    sequences: Tensor | None = None
    scores: Tensor | None = None
    lengths: Tensor | None = None
    acceptance: float | None = None
    tokens_per_forward: float | None = None


def as_prompt(prompt: Tensor | Sequence[Sequence[int]], device: torch.device) -> Prompt:
    """`[B, T]` ids as a tensor, or a list of 1-D tensors when the prompts differ in length."""
    if not isinstance(prompt, Tensor):
        rows = [torch.as_tensor(list(p), dtype=torch.long) for p in prompt]
        if not rows or any(r.dim() != 1 or r.numel() == 0 for r in rows):
            raise ShapeError("prompt must be a non-empty list of non-empty token lists")
        if len({r.numel() for r in rows}) > 1:
            return [r.to(device) for r in rows]
        prompt = torch.stack(rows)
    if prompt.dim() == 1:
        prompt = prompt[None]
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ShapeError(f"prompt must have shape [B, T] with T >= 1, got {list(prompt.shape)}")
    return prompt.to(device=device, dtype=torch.long)


def prompt_rows(prompt: Prompt) -> list[Tensor]:
    return list(prompt.unbind(0)) if isinstance(prompt, Tensor) else list(prompt)


def prefill(
    model: Model, rows: Sequence[Tensor], kv_cache: dict[str, Any] | None = None
) -> tuple[Tensor | None, State, int]:
    """Run each group of equal-length prompts from a fresh state and stack the row states.

    Returns (next-token logits `[B, V]`, state, forward passes). Empty prompts start from
    `init_state` without a forward; their logits rows are zeros (None if all are empty).
    `kv_cache` bounds the attention layers' caches (`seqlab.ops.kv_cache`; the prompt
    then runs in the policy's chunks inside each attention layer).
    """
    lengths = torch.tensor([r.numel() for r in rows])
    parts, logits, nfe = [], None, 0
    for n in lengths.unique().tolist():
        index = (lengths == n).nonzero().squeeze(1)
        n_rows = index.numel()
        if n == 0:
            parts.append((index.to(model.device), init_bounded_state(model, n_rows, kv_cache)))
            continue
        ids = torch.stack([rows[i] for i in index.tolist()])
        out, state = model(ids, init_bounded_state(model, index.numel(), kv_cache))
        nfe += 1
        if logits is None:
            logits = out.new_zeros(len(rows), out.shape[-1])
        logits[index.to(out.device)] = out[:, -1]
        parts.append((index.to(model.device), state))
    return logits, merge_rows(parts), nfe


class Draws:
    """Uniform draws in float64: from one generator for the batch (`seed` an int or None), or
    from one generator per row (`seed` a list), so that a row draws the same numbers in a
    batch as alone."""

    def __init__(self, seed: int | Sequence[int] | None, batch_size: int, device: torch.device):
        self.batch_size, self.device = batch_size, device
        self.generator, self.generators = None, None
        if isinstance(seed, int):
            self.generator = torch.Generator(device).manual_seed(seed)
        elif seed is not None:
            if len(seed) != batch_size:
                raise ConfigError(
                    f"a seed list needs one seed per prompt ({batch_size}), got {len(seed)}"
                )
            self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seed]

    def uniform(self, n: int) -> Tensor:
        """`[B, n]` uniforms in [0, 1)."""
        if self.generators is None:
            return torch.rand(
                self.batch_size,
                n,
                generator=self.generator,
                dtype=torch.float64,
                device=self.device,
            )
        return torch.stack(
            [
                torch.rand(n, generator=g, dtype=torch.float64, device=self.device)
                for g in self.generators
            ]
        )


def categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw per row from unnormalised `probs [B, V]` with uniforms `u [B]`."""
    cdf = probs.double().cumsum(dim=-1)
    target = (u * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def softmax64(scores: Tensor) -> Tensor:
    return scores.double().softmax(dim=-1)


class Continuations:
    """Per-row generated tokens with stopping, streaming and the ids processors read."""

    def __init__(
        self,
        rows: Sequence[Tensor],
        max_new_tokens: int,
        stop: StopCriteria,
        stream: Stream | None,
        pad_id: int,
        extra: int = 0,
    ) -> None:
        self.prompts = [r.tolist() for r in rows]
        self.max_new, self.stop, self.stream, self.pad_id = max_new_tokens, stop, stream, pad_id
        self.new: list[list[int]] = [[] for _ in rows]
        self.done = [max_new_tokens == 0] * len(rows)
        device = rows[0].device
        self.lengths = torch.tensor([len(p) for p in self.prompts], device=device)
        width = int(self.lengths.max()) + max_new_tokens + extra + 1
        self.ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            self.ids[i, : r.numel()] = r

    @property
    def finished(self) -> bool:
        return all(self.done)

    def process(
        self, processors: Sequence[LogitsProcessor], scores: Tensor, draft: Tensor | None = None
    ) -> Tensor:
        """Apply `processors` to `scores [B, V]`; row i's `input_ids` are its tokens so far
        followed by `draft[i]` when given. Rows are grouped by length so that no processor
        ever sees padding."""
        if not processors:
            return scores
        ids, lengths = self.ids, self.lengths
        if draft is not None and draft.shape[1]:
            columns = lengths[:, None] + torch.arange(draft.shape[1], device=ids.device)
            ids = ids.scatter(1, columns, draft)
            lengths = lengths + draft.shape[1]
        out = torch.empty_like(scores)
        for n in lengths.unique().tolist():
            index = (lengths == n).nonzero().squeeze(1)
            out[index] = apply_processors(processors, ids[index, :n], scores[index])
        return out

    def extend(self, tokens: Tensor, counts: Tensor | None = None) -> None:
        """Append the first `counts[i]` of `tokens [B, n]` to row i (all n when None), up to
        a stop or `max_new_tokens`."""
        rows = tokens.tolist()
        counts = [len(r) for r in rows] if counts is None else counts.tolist()
        streamed: list[list[int]] = []
        for i, (row, count) in enumerate(zip(rows, counts, strict=True)):
            added: list[int] = []
            for token in row[:count]:
                if self.done[i]:
                    break
                self.ids[i, len(self.prompts[i]) + len(self.new[i])] = token
                self.new[i].append(token)
                added.append(token)
                length = len(self.prompts[i]) + len(self.new[i])
                self.done[i] = len(self.new[i]) >= self.max_new or self.stop(
                    self.new[i], self.ids[i, :length]
                )
            streamed.append(added)
        self.lengths = torch.tensor(
            [len(p) + len(n) for p, n in zip(self.prompts, self.new, strict=True)],
            device=self.lengths.device,
        )
        if self.stream is not None:
            self.stream(streamed)

    def tokens_per_forward(self, nfe: int) -> float:
        """New tokens per row per forward pass (`nfe` passes in all)."""
        return sum(len(n) for n in self.new) / (len(self.new) * max(nfe, 1))

    def result(self, nfe: int, start: float, **fields: object) -> Generation:
        rows = [p + n for p, n in zip(self.prompts, self.new, strict=True)]
        return Generation(
            pad_rows(rows, self.pad_id, self.ids.device),
            nfe,
            time.perf_counter() - start,
            lengths=torch.tensor([len(r) for r in rows]),
            **fields,
        )


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


@torch.no_grad()
@in_eval_mode
def decode(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    greedy: bool,
    processors: Sequence[LogitsProcessor] = (),
    seed: int | Sequence[int] | None = None,
    stop: StopCriteria | None = None,
    stream: Stream | None = None,
    pad_id: int = 0,
    kv_cache: dict[str, Any] | None = None,
) -> Generation:
    start = time.perf_counter()
    rows = prompt_rows(prompt)
    out = Continuations(rows, max_new_tokens, stop or StopCriteria(), stream, pad_id)
    draws = Draws(seed, len(rows), model.device)
    logits, state, nfe = prefill(model, rows, kv_cache)
    while not out.finished:
        scores = out.process(processors, logits.float())
        nxt = (
            scores.argmax(dim=-1)
            if greedy
            else categorical(softmax64(scores), draws.uniform(1)[:, 0])
        )
        out.extend(nxt[:, None])
        if out.finished:
            break
        logits, state = model(nxt[:, None], state)
        logits = logits[:, -1]
        nfe += 1
    return out.result(nfe, start)


@torch.no_grad()
@in_eval_mode
def fill(
    model: Model, tokens: Tensor, known: Tensor, vocab_size: int | None = None
) -> tuple[Tensor, int]:
    """Greedy left-to-right filling: `tokens [B, L]` with every position where `known [B, L]`
    is False replaced by the argmax of the next-token logits (the first `vocab_size` ids; all
    when None) given the row so far, known tokens as they are and filled ones as filled; the
    values at unknown positions are never read. Each row is prefilled up to its first
    unknown position (`prefill`), then every row advances one position per forward pass to
    its last unknown one. On a prompt followed by unknown positions this is `greedy`
    decoding. Returns the filled tokens and the number of forward passes."""
    if known.shape != tokens.shape:
        raise ShapeError(f"known must have the tokens' shape {list(tokens.shape)}")
    if not bool(known[:, 0].all()):
        raise ShapeError("position 0 must be known: nothing precedes it to predict it from")
    unknown = ~known
    x = tokens.masked_fill(unknown, 0)
    rows = unknown.any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x, 0
    length = tokens.shape[1]
    gaps = unknown[rows].long()
    first = gaps.argmax(1)
    last = length - 1 - gaps.flip(1).argmax(1)
    prompts = [x[r, :f] for r, f in zip(rows.tolist(), first.tolist(), strict=True)]
    logits, state, nfe = prefill(model, prompts)
    steps = int((last - first).max()) + 1
    for step in range(steps):
        position = (first + step).clamp(max=length - 1)
        live = first + step <= last
        guess = logits[:, :vocab_size].argmax(-1) if vocab_size else logits.argmax(-1)
        chosen = torch.where(unknown[rows, position] & live, guess, x[rows, position])
        x[rows[live], position[live]] = chosen[live]
        if step + 1 < steps:
            logits, state = model(chosen[:, None], state)
            logits = logits[:, -1]
            nfe += 1
    return x, nfe


@SAMPLERS.register("greedy")
@shares(*PROCESSING, *OUTPUT, *MEMORY)
def greedy(
    model: Model, prompt: Prompt, max_new_tokens: int, options: SamplingOptions
) -> Generation:
    """The most likely next token at every step."""
    return decode(
        model,
        prompt,
        max_new_tokens,
        greedy=True,
        processors=options.logits_processors(),
        stop=options.stop_criteria(),
        stream=options.stream,
        pad_id=options.pad_id,
        kv_cache=options.kv_cache,
    )


@SAMPLERS.register("sample")
@shares(*FILTERS, *PROCESSING, *OUTPUT, *MEMORY)
def sample(
    model: Model, prompt: Prompt, max_new_tokens: int, options: SamplingOptions
) -> Generation:
    """A draw from the processed next-token distribution at every step.

    `seed`: an int (one generator for the batch) or one int per prompt (a generator per
    row: each row then equals its prompt sampled alone with that seed)."""
    return decode(
        model,
        prompt,
        max_new_tokens,
        greedy=False,
        processors=options.logits_processors(),
        seed=options.seed,
        stop=options.stop_criteria(),
        stream=options.stream,
        pad_id=options.pad_id,
        kv_cache=options.kv_cache,
    )
