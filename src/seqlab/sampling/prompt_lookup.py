"""Prompt lookup decoding (Saxena, 2023): speculative decoding whose draft is copied from the
context instead of predicted by a draft model.

Each round, row i looks for the last n tokens of its context (prompt + tokens so far) earlier
in that context, for n from `max_ngram` down to `min_ngram`; the first n that matches drafts
up to `num_draft_tokens` tokens that followed the match (the latest match followed by as
many, else the earliest, which is followed by the most). A row without a match drafts nothing
and its round is a plain decode step. With `adaptive`, each row drafts at most a length of its
own that grows by 2 after a round that accepted every draft and shrinks by 1 (down to 1) after
a rejection, as Hugging Face's assisted generation schedules its draft length, so that text
the context does not predict costs few wasted positions (the draft then depends on the past
only, which keeps sampling exact). The model scores [x, d_1..d_k] in one forward and the
drafts are verified as in `speculative` (`check_drafts`): greedy keeps the longest prefix
equal to the model's argmax, so the output is the model's greedy decoding. Sampling treats the
draft as a point mass q = one-hot(d_j): d_j is kept with probability p(d_j), and at the first
rejection a token is drawn from norm(max(0, p − q)), which keeps the output distributed
exactly as the model's samples.

Rows draft different numbers of tokens: the batch reads the longest draft, shorter ones padded
and never accepted, and each row is rewound to what it accepted (`seqlab.sampling.state`), so
it evolves as it would alone. Every round draws `num_draft_tokens + 1` uniforms per row
whatever the drafts, so with a seed list a row also draws the same numbers as alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.model import Model
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import (
    Continuations,
    Draws,
    Generation,
    Prompt,
    StopCriteria,
    Stream,
    prefill,
    prompt_rows,
)
from seqlab.sampling.base import (
    FILTERS,
    OUTPUT,
    PROCESSING,
    SamplingOptions,
    in_eval_mode,
    shares,
)
from seqlab.sampling.processors import LogitsProcessor
from seqlab.sampling.speculative import check_drafts, drafted_result


def lookup(context: Tensor, num_draft_tokens: int, max_ngram: int, min_ngram: int) -> Tensor:
    """The draft for a 1-D `context`: the at most `num_draft_tokens` tokens that followed an
    earlier occurrence of its last n tokens, for the largest n in [min_ngram, max_ngram] that
    occurs earlier; empty when none does."""
    length = context.numel()
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        # every n-gram that ends before the last token, so that something follows it
        windows = context[: length - 1].unfold(0, n, 1)
        starts = (windows == context[length - n :]).all(dim=1).nonzero().squeeze(1) + n
        if starts.numel():
            full = starts[starts + num_draft_tokens <= length]
            start = int(full[-1] if full.numel() else starts[0])
            return context[start : start + num_draft_tokens]
    return context[:0]


@torch.no_grad()
@in_eval_mode
def prompt_lookup_decode(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    num_draft_tokens: int,
    max_ngram: int,
    min_ngram: int,
    adaptive: bool,
    do_sample: bool,
    processors: Sequence[LogitsProcessor] = (),
    seed: int | Sequence[int] | None = None,
    stop: StopCriteria | None = None,
    stream: Stream | None = None,
    pad_id: int = 0,
) -> Generation:
    k = num_draft_tokens
    if k < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {k}")
    if not 1 <= min_ngram <= max_ngram:
        raise ConfigError(
            f"prompt_lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}"
        )
    start = time.perf_counter()
    rows = prompt_rows(prompt)
    b, device = len(rows), model.device
    out = Continuations(rows, max_new_tokens, stop or StopCriteria(), stream, pad_id, extra=k + 1)
    draws = Draws(seed, b, device)
    # the model reads everything but the last prompt token, which opens the first round
    _, state, nfe = prefill(model, [r[:-1] for r in rows])
    last = torch.stack([r[-1] for r in rows])
    limit = torch.full((b,), k, device=device)
    proposed = accepted = 0
    while not out.finished:
        found = [
            lookup(out.ids[i, : int(out.lengths[i])], most, max_ngram, min_ngram)
            if not out.done[i]
            else out.ids[i, :0]
            for i, most in enumerate(limit.tolist())
        ]
        lengths = torch.tensor([f.numel() for f in found], device=device)
        width = int(lengths.max())
        d = torch.zeros(b, width, dtype=torch.long, device=device)
        for i, f in enumerate(found):
            d[i, : f.numel()] = f
        q = u = None
        if do_sample:
            q = torch.nn.functional.one_hot(d, model.config.vocab_size).double()
            u = draws.uniform(k + 1)
            u = torch.cat([u[:, :width], u[:, k:]], dim=1)
        n, last, _, state, passes = check_drafts(
            model, state, last, d, out, processors, q, u, lengths
        )
        nfe += passes
        proposed += int(lengths.sum())
        accepted += int(n.sum())
        if adaptive:
            grown = torch.where(n == lengths, (limit + 2).clamp(max=k), (limit - 1).clamp(min=1))
            limit = torch.where(lengths > 0, grown, limit)
    return drafted_result(out, nfe, start, accepted, proposed)


@SAMPLERS.register("prompt_lookup")
@shares(*FILTERS, *PROCESSING, *OUTPUT)
def prompt_lookup(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    num_draft_tokens: int = 10,
    max_ngram: int = 3,
    min_ngram: int = 1,
    adaptive: bool = True,
    do_sample: bool = False,
) -> Generation:
    """Prompt lookup decoding: the draft is the continuation of an earlier occurrence of the
    last `max_ngram`..`min_ngram` tokens (up to `num_draft_tokens`), checked in one pass.
    `adaptive`: each row's draft length grows after full acceptance and shrinks after a
    rejection.

    Greedy (`do_sample=False`, the default; equals greedy decoding) or rejection sampling
    from the processed distribution (`do_sample=True`; equals `sample` in distribution)."""
    return prompt_lookup_decode(
        model,
        prompt,
        max_new_tokens,
        num_draft_tokens=num_draft_tokens,
        max_ngram=max_ngram,
        min_ngram=min_ngram,
        adaptive=adaptive,
        do_sample=do_sample,
        processors=options.logits_processors(),
        seed=options.seed,
        stop=options.stop_criteria(),
        stream=options.stream,
        pad_id=options.pad_id,
    )
