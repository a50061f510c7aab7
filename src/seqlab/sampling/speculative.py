"""Speculative decoding with a smaller draft model, batched with per-row acceptance, and
self-speculative decoding with multi-token-prediction heads.

Each round the draft proposes k tokens d_1..d_k after the last token x; the target scores
[x, d_1..d_k] in one forward, giving its distributions p_0..p_k. Greedy: row i accepts the
longest prefix of drafts equal to the target's argmax and appends the target's argmax after
it, so the output is the target's greedy decoding. Sampling (Leviathan et al., 2023; Chen et
al., 2023): d_j is accepted with probability min(1, p(d_j)/q(d_j)); at the first rejection a
token is drawn from norm(max(0, p − q)), and after k acceptances from p_k, which leaves the
output distributed exactly as the target's.

Rows accept different numbers n_i of drafts ("Batch Speculative Decoding Done Right"): the
target keeps [x, d_1..d_{n_i}] of what it read, the draft what it read of those (d_k, which
it never read, waits for the next round with the new x). KV caches forget the other entries
(position −1, then compacted per row); recurrent states re-run the kept tokens from the state
saved before the round (`seqlab.sampling.state.rewind`). Every row therefore evolves exactly
as it would alone, and with a seed list it also draws the same numbers.

The round itself (one forward over [x, d_1..d_k], `verify`, append, rewind) is `check_drafts`,
which every drafting decoder shares (`prompt_lookup` too, whose rows draft different numbers
of tokens).
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
    categorical,
    prefill,
    prompt_rows,
    softmax64,
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
from seqlab.sampling.state import State, feed_rows, rewind


@torch.no_grad()
@in_eval_mode
def speculative_decode(
    model: Model,
    draft_model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    num_draft_tokens: int,
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
    if draft_model.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"the draft model's vocabulary ({draft_model.config.vocab_size}) must equal the "
            f"target's ({model.config.vocab_size})"
        )
    start = time.perf_counter()
    rows = prompt_rows(prompt)
    b, device = len(rows), model.device
    out = Continuations(rows, max_new_tokens, stop or StopCriteria(), stream, pad_id, extra=k + 1)
    draws = Draws(seed, b, device)
    # both models read everything but the last prompt token, which opens the first round
    prefixes = [r[:-1] for r in rows]
    last = torch.stack([r[-1] for r in rows])
    _, state, nfe = prefill(model, prefixes)
    _, draft_state, _ = prefill(draft_model, prefixes)
    # tokens the draft has not read yet: [last], or [d_k, last] after a fully accepted round
    pending = last[:, None]
    pending_lengths = torch.ones(b, dtype=torch.long, device=device)
    proposed = accepted = 0
    while not out.finished:
        active = torch.tensor([not d for d in out.done], device=device)
        u = draws.uniform(2 * k + 1) if do_sample else None
        draft_saved, drafts, q = draft_state, [], []
        logits, draft_state = feed_rows(draft_model, draft_state, pending, pending_lengths)
        for j in range(k):
            if j:
                logits, draft_state = draft_model(drafts[-1][:, None], draft_state)
                logits = logits[:, -1]
            scores = out.process(processors, logits.float(), _prefix(drafts, b, device))
            if do_sample:
                probs = softmax64(scores)
                drafts.append(categorical(probs, u[:, j]))
                q.append(probs)
            else:
                drafts.append(scores.argmax(dim=-1))
        d = torch.stack(drafts, dim=1)
        q_d = torch.stack(q, dim=1) if do_sample else None
        n, final, _, state, passes = check_drafts(
            model, state, last, d, out, processors, q_d, u[:, k:] if do_sample else None
        )
        nfe += passes
        proposed += k * int(active.sum())
        accepted += int(n[active].sum())
        # the draft read pending + d_1..d_{k-1}; it keeps pending + the accepted drafts
        draft_fed = torch.cat([pending, d[:, :-1]], dim=1)
        columns = pending_lengths[:, None] + torch.arange(k - 1, device=device)
        draft_fed = draft_fed.scatter(1, columns, d[:, :-1])
        draft_state, _ = rewind(
            draft_model,
            draft_saved,
            draft_state,
            draft_fed,
            pending_lengths + n.clamp(max=k - 1),
            pending_lengths + k - 1,
        )
        full = n == k
        pending = torch.stack([torch.where(full, d[:, -1], final), final], dim=1)
        pending_lengths = 1 + full.long()
        last = final
    return drafted_result(out, nfe, start, accepted, proposed)


def verify(
    scores: Tensor,
    d: Tensor,
    q: Tensor | None,
    u: Tensor | None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Accept drafts `d [B, k]` against target scores `[B, k+1, V]`; returns the number
    accepted `n [B]` and the token that follows them `[B]`.

    Greedy (`q` None): n is the length of the prefix equal to the target's argmax, followed by
    the argmax. Sampling: drafts came from `q [B, k, V]`; d_j is kept when u_j q(d_j) < p(d_j)
    (`u [B, k+1]`: k acceptance uniforms and one for the final draw), the final token is
    drawn from norm(max(0, p − q)) after a rejection, from p_n after n acceptances of all the
    row's drafts. Row i drafted only its first `lengths[i]` tokens (all k when None): the rest
    of its row of `d` is padding, never accepted.
    """
    k = d.shape[1]
    batch = torch.arange(d.shape[0], device=d.device)
    if lengths is None:
        lengths = torch.full_like(batch, k)
    drafted = torch.arange(k, device=d.device) < lengths[:, None]
    if q is None:
        target = scores.argmax(dim=-1)
        n = ((d == target[:, :k]) & drafted).long().cumprod(dim=1).sum(dim=1)
        return n, target[batch, n]
    p = softmax64(scores)
    q_all = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)
    p_d = p[:, :k].gather(-1, d[..., None]).squeeze(-1)
    q_d = q_all[:, :k].gather(-1, d[..., None]).squeeze(-1)
    n = ((u[:, :k] * q_d < p_d) & drafted).long().cumprod(dim=1).sum(dim=1)
    p_n = p[batch, n]
    residual = (p_n - q_all[batch, n]).clamp(min=0)
    rejected = (n < lengths)[:, None] & (residual.sum(-1, keepdim=True) > 0)
    return n, categorical(torch.where(rejected, residual, p_n), u[:, k])


def check_drafts(
    model: Model,
    state: State,
    last: Tensor,
    d: Tensor,
    out: Continuations,
    processors: Sequence[LogitsProcessor],
    q: Tensor | None,
    u: Tensor | None,
    lengths: Tensor | None = None,
    heads: int = 1,
) -> tuple[Tensor, Tensor, Tensor, State, int]:
    """One verification round: the model reads `[last, d]` in one forward (`d [B, k]`; `q`,
    `u`, `lengths` as in `verify`), row i's accepted drafts and the token after them are
    appended to `out`, and the state is rewound to them. A multi-token-prediction model's
    logits hold `heads` vocabularies; the first predicts the next token. Returns (accepted
    `n [B]`, the token after them `[B]`, the logits `[B, k+1, heads·V]`, the state, forward
    passes)."""
    k = d.shape[1]
    fed = torch.cat([last[:, None], d], dim=1)
    logits, after = model(fed, state)
    following = logits.unflatten(-1, (heads, -1))[..., 0, :].float()
    scores = torch.stack(
        [out.process(processors, following[:, j], d[:, :j]) for j in range(k + 1)], dim=1
    )
    n, final = verify(scores, d, q, u, lengths)
    out.extend(accepted_tokens(d, n, final), n + 1)
    after, extra = rewind(model, state, after, fed, n + 1)
    return n, final, logits, after, 1 + extra


def drafted_result(
    out: Continuations, nfe: int, start: float, accepted: int, proposed: int
) -> Generation:
    """The `Generation` of a drafting decoder, with its acceptance rate and tokens per
    forward pass."""
    return out.result(
        nfe,
        start,
        acceptance=accepted / max(proposed, 1),
        tokens_per_forward=out.tokens_per_forward(nfe),
    )


def accepted_tokens(d: Tensor, n: Tensor, final: Tensor) -> Tensor:
    """`[B, k+1]`: row i holds d_1..d_{n_i}, then `final` (later columns are unused)."""
    return torch.cat([d, final[:, None]], dim=1).scatter(1, n[:, None], final[:, None])


def _prefix(drafts: list[Tensor], b: int, device: torch.device) -> Tensor:
    if not drafts:
        return torch.zeros(b, 0, dtype=torch.long, device=device)
    return torch.stack(drafts, dim=1)


@SAMPLERS.register("speculative")
@shares(*FILTERS, *PROCESSING, *OUTPUT)
def speculative(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    draft_model: Model,
    num_draft_tokens: int = 4,
    do_sample: bool = False,
) -> Generation:
    """Speculative decoding: `draft_model` proposes `num_draft_tokens`, the model checks them
    in one pass.

    Greedy (`do_sample=False`, the default; equals the target's greedy decoding) or
    rejection sampling from the processed target distribution (`do_sample=True`)."""
    return speculative_decode(
        model,
        draft_model,
        prompt,
        max_new_tokens,
        num_draft_tokens=num_draft_tokens,
        do_sample=do_sample,
        processors=options.logits_processors(),
        seed=options.seed,
        stop=options.stop_criteria(),
        stream=options.stream,
        pad_id=options.pad_id,
    )


@torch.no_grad()
@in_eval_mode
def self_speculative_decode(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    heads: int,
    do_sample: bool,
    processors: Sequence[LogitsProcessor] = (),
    seed: int | Sequence[int] | None = None,
    stop: StopCriteria | None = None,
    stream: Stream | None = None,
    pad_id: int = 0,
) -> Generation:
    """Decode a multi-token-prediction model (objective `mtp`, `heads` output heads) with its
    own extra heads as the draft: one forward per round scores the last token and the heads'
    k = heads − 1 guesses, and returns the next guesses from the last accepted position."""
    if heads < 2 or model.config.vocab_size % heads:
        raise ConfigError(
            f"self_speculative needs heads >= 2 dividing the model's vocabulary "
            f"({model.config.vocab_size}), got {heads}"
        )
    start = time.perf_counter()
    rows = prompt_rows(prompt)
    b, device, vocab, k = len(rows), model.device, model.config.vocab_size // heads, heads - 1
    out = Continuations(rows, max_new_tokens, stop or StopCriteria(), stream, pad_id, extra=k + 1)
    draws = Draws(seed, b, device)
    logits, state, nfe = prefill(model, rows)
    guesses = logits.unflatten(-1, (heads, vocab))
    scores = out.process(processors, guesses[:, 0].float())
    last = (
        categorical(softmax64(scores), draws.uniform(1)[:, 0]) if do_sample else scores.argmax(-1)
    )
    out.extend(last[:, None])
    d = guesses[:, 1:].argmax(dim=-1)
    batch = torch.arange(b, device=device)
    proposed = accepted = 0
    while not out.finished:
        active = torch.tensor([not done for done in out.done], device=device)
        # the drafts are the heads' argmax: q is one-hot, so d_j is kept with probability p(d_j)
        q = torch.nn.functional.one_hot(d, vocab).double() if do_sample else None
        u = draws.uniform(k + 1) if do_sample else None
        n, final, logits, state, passes = check_drafts(
            model, state, last, d, out, processors, q, u, heads=heads
        )
        nfe += passes
        proposed += k * int(active.sum())
        accepted += int(n[active].sum())
        d = logits.unflatten(-1, (heads, vocab))[batch, n, 1:].argmax(dim=-1)
        last = final
    return drafted_result(out, nfe, start, accepted, proposed)


@SAMPLERS.register("self_speculative")
@shares(*FILTERS, *PROCESSING, *OUTPUT)
def self_speculative(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    heads: int = 2,
    do_sample: bool = False,
) -> Generation:
    """Self-speculative decoding of a multi-token-prediction model, its extra heads drafting.

    Greedy output equals greedy decoding of head 0 (the next-token head); sampling keeps
    head 0's distribution. `heads` is the `mtp` objective's option the model was trained with."""
    return self_speculative_decode(
        model,
        prompt,
        max_new_tokens,
        heads=heads,
        do_sample=do_sample,
        processors=options.logits_processors(),
        seed=options.seed,
        stop=options.stop_criteria(),
        stream=options.stream,
        pad_id=options.pad_id,
    )
