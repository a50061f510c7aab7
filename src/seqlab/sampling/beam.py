"""Beam search and diverse (group) beam search.

Beam search keeps the `num_beams` best partial continuations by summed log-probability;
after each step the decode state is reordered by beam index (`reorder_state`), which works
for KV caches and recurrent states alike. Finished hypotheses (ending in a stop token, or
reaching `max_new_tokens`) are ranked by sum log p / (new tokens) ** length_penalty.

Diverse beam search (Vijayakumar et al., 2018, "Diverse Beam Search") splits the beams into
`num_groups` groups decoded one after another at every step; group g's log-probabilities are
lowered by `diversity_penalty` times the number of times earlier groups chose each token at
this step (Hamming diversity). Beams of a group are selected by this augmented score; the
returned hypotheses of all groups are ranked and scored by their model log-probability.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seqlab.errors import ConfigError
from seqlab.model import Model
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import Generation, Prompt, pad_rows, prefill, prompt_rows
from seqlab.sampling.base import PROCESSING, SamplingOptions, in_eval_mode, shares
from seqlab.sampling.processors import LogitsProcessor, apply_processors
from seqlab.state import reorder_state


@dataclass
class Hypothesis:
    rank_score: float  # selection score / length ** length_penalty (decides membership)
    score: float  # model log-probability / length ** length_penalty (reported)
    tokens: list[int]


class GroupHypotheses:
    """The best `size` finished hypotheses of one group of one prompt."""

    def __init__(self, size: int, length_penalty: float, early_stopping: bool) -> None:
        self.size, self.length_penalty, self.early_stopping = size, length_penalty, early_stopping
        self.items: list[Hypothesis] = []

    def add(self, rank: float, logp: float, tokens: list[int]) -> None:
        norm = max(len(tokens), 1) ** self.length_penalty
        self.items.append(Hypothesis(rank / norm, logp / norm, tokens))
        self.items.sort(key=lambda h: -h.rank_score)
        del self.items[self.size :]

    def is_done(self, best_running: float, length: int) -> bool:
        """Full, and (unless early stopping) no running beam can still rank above the worst."""
        if len(self.items) < self.size:
            return False
        if self.early_stopping:
            return True
        return best_running / max(length, 1) ** self.length_penalty <= self.items[-1].rank_score


@torch.no_grad()
@in_eval_mode
def beam_search(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    num_beams: int,
    num_groups: int = 1,
    diversity_penalty: float = 0.0,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
    num_return_sequences: int | None = None,
    stop_tokens: Sequence[int] = (),
    processors: Sequence[LogitsProcessor] = (),
    pad_id: int = 0,
) -> Generation:
    if num_beams < 1 or num_groups < 1 or num_beams % num_groups:
        raise ConfigError(
            f"num_beams ({num_beams}) must be a positive multiple of num_groups ({num_groups})"
        )
    n_return = num_return_sequences or num_beams
    if not 1 <= n_return <= num_beams:
        raise ConfigError(f"num_return_sequences must lie in [1, {num_beams}], got {n_return}")
    start = time.perf_counter()
    rows = prompt_rows(prompt)
    b, nb, g_count = len(rows), num_beams, num_groups
    gb = nb // g_count
    device = model.device
    logits, state, nfe = prefill(model, rows)
    expand = torch.arange(b, device=device).repeat_interleave(nb)
    state, logits = reorder_state(state, expand), logits[expand]
    prompts = [r.tolist() for r in rows]
    prompt_len = torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(nb)
    ids = pad_rows(prompts, pad_id, device)[expand]
    generated = torch.zeros(b * nb, 0, dtype=torch.long, device=device)
    # within each group only beam 0 is live at first, so the first step picks distinct tokens
    rank = torch.full((b, g_count, gb), -torch.inf, dtype=torch.float64, device=device)
    rank[:, :, 0] = 0.0
    logp = torch.zeros(b, g_count, gb, dtype=torch.float64, device=device)
    hyps = [
        [GroupHypotheses(gb, length_penalty, early_stopping) for _ in range(g_count)]
        for _ in range(b)
    ]
    done = torch.zeros(b, g_count, dtype=torch.bool)
    stops = set(int(t) for t in stop_tokens)

    for step in range(max_new_tokens):
        scores = torch.empty_like(logits, dtype=torch.float32)
        for n in prompt_len.unique().tolist():
            index = (prompt_len == n).nonzero().squeeze(1)
            row_ids = torch.cat([ids[index, :n], generated[index]], dim=1)
            scores[index] = apply_processors(processors, row_ids, logits[index].float())
        vocab = scores.shape[-1]
        log_probs = scores.double().log_softmax(dim=-1).view(b, g_count, gb, vocab)
        chosen = torch.zeros(b, vocab, dtype=torch.float64, device=device)
        source = torch.arange(b * nb, device=device).view(b, g_count, gb).clone()
        tokens = torch.full((b, g_count, gb), pad_id, dtype=torch.long, device=device)
        new_rank, new_logp = rank.clone(), logp.clone()
        for g in range(g_count):
            augmented = log_probs[:, g] - diversity_penalty * chosen[:, None, :]
            cand = (rank[:, g, :, None] + augmented).view(b, -1)
            true = (logp[:, g, :, None] + log_probs[:, g]).view(b, -1)
            top = cand.topk(min(2 * gb, cand.shape[1]), dim=-1)
            for i in range(b):
                if done[i, g]:
                    continue
                slot = 0
                for r, (value, flat) in enumerate(
                    zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True)
                ):
                    beam, token = divmod(flat, vocab)
                    row = i * nb + g * gb + beam
                    if token in stops:
                        if r < gb and value > -torch.inf:
                            seq = generated[row].tolist() + [token]
                            hyps[i][g].add(value, float(true[i, flat]), seq)
                        continue
                    source[i, g, slot] = row
                    tokens[i, g, slot] = token
                    new_rank[i, g, slot] = value
                    new_logp[i, g, slot] = true[i, flat]
                    slot += 1
                    if slot == gb:
                        break
                new_rank[i, g, slot:] = -torch.inf
                best = float(new_rank[i, g].max())
                done[i, g] = hyps[i][g].is_done(best, step + 1)
            chosen.scatter_add_(1, tokens[:, g], torch.ones_like(tokens[:, g], dtype=torch.float64))
        rank, logp = new_rank, new_logp
        order = source.view(-1)
        generated = torch.cat([generated[order], tokens.view(-1, 1)], dim=1)
        state = reorder_state(state, order)
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        logits, state = model(tokens.view(-1, 1), state)
        logits = logits[:, -1]
        nfe += 1

    for i in range(b):
        for g in range(g_count):
            if done[i, g]:
                continue
            for beam in range(gb):
                row = i * nb + g * gb + beam
                if rank[i, g, beam] == -torch.inf:
                    continue
                hyps[i][g].add(
                    float(rank[i, g, beam]), float(logp[i, g, beam]), generated[row].tolist()
                )
    best = [
        sorted((h for group in hyps[i] for h in group.items), key=lambda h: -h.score)[:n_return]
        for i in range(b)
    ]
    seqs = [[prompts[i] + h.tokens for h in best[i]] for i in range(b)]
    flat = pad_rows([s for row in seqs for s in row], pad_id, device)
    sequences = flat.view(b, n_return, -1)
    tokens = pad_rows([row[0] for row in seqs], pad_id, device)
    return Generation(
        tokens,
        nfe,
        time.perf_counter() - start,
        sequences=sequences,
        scores=torch.tensor([[h.score for h in row] for row in best], dtype=torch.float64),
        lengths=torch.tensor([len(row[0]) for row in seqs]),
    )


@SAMPLERS.register("beam")
@shares(*PROCESSING, "stop_tokens", "pad_id")
def beam(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
    num_return_sequences: int | None = None,
) -> Generation:
    """Beam search: the `num_beams` best continuations by length-penalised log-probability."""
    return beam_search(
        model,
        prompt,
        max_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        stop_tokens=options.stop_tokens,
        processors=options.logits_processors(),
        pad_id=options.pad_id,
    )


@SAMPLERS.register("diverse_beam")
@shares(*PROCESSING, "stop_tokens", "pad_id")
def diverse_beam(
    model: Model,
    prompt: Prompt,
    max_new_tokens: int,
    options: SamplingOptions,
    *,
    num_beams: int = 4,
    num_groups: int = 2,
    diversity_penalty: float = 0.5,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
    num_return_sequences: int | None = None,
) -> Generation:
    """Diverse beam search: `num_groups` groups of beams, each penalised by
    `diversity_penalty` for the tokens that earlier groups chose at the same step."""
    return beam_search(
        model,
        prompt,
        max_new_tokens,
        num_beams=num_beams,
        num_groups=num_groups,
        diversity_penalty=diversity_penalty,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        stop_tokens=options.stop_tokens,
        processors=options.logits_processors(),
        pad_id=options.pad_id,
    )
