"""Insertion decoding for models trained with the `insertion` objective (ILM).

Starting from the prompt, every step reads the whole sequence bidirectionally and draws one
action from the joint distribution over (open slot, token) pairs and stop
(`objectives.insertion.joint_log_probs`; the open slots are the one after the prompt and
those around every inserted token, so the prompt stays a prefix), inserts the token, and
goes on until the row draws stop or has `max_new_tokens` new tokens. The filters
(`temperature`, `top_k`, `top_p`, `min_p`, `typical_p`) act on the flattened joint, stop
included; temperature 0 is greedy. Rows of one batch run together, one model call per
distinct row length (a row that stopped is left out of later calls). NFE counts the calls.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from seqlab.model import Model
from seqlab.objectives.insertion import Canvas, Insertion, decode
from seqlab.registry import SAMPLERS
from seqlab.sampling.ar import Draws, Generation, categorical, pad_rows
from seqlab.sampling.base import FILTERS, SamplingOptions, in_eval_mode, shares
from seqlab.sampling.processors import apply_processors, sampling_processors


@SAMPLERS.register("insertion", paradigm="insertion")
@shares(*FILTERS, "pad_id")
@torch.no_grad()
@in_eval_mode
def insertion(
    model: Model, prompt: Tensor, max_new_tokens: int, options: SamplingOptions
) -> Generation:
    """Insertion decoding (ILM): one drawn (slot, token) inserted per step until stop.

    `seed`: an int seeds one generator for the batch; filters act on the joint over slots,
    tokens and stop."""
    start = time.perf_counter()
    vocab_size = model.config.vocab_size - Insertion.extra_tokens
    processors = sampling_processors(
        options.temperature, options.top_k, options.top_p, options.min_p, options.typical_p
    )
    draws = Draws(options.seed, prompt.shape[0], model.device)

    def choose(scores: Tensor, canvas: Canvas, rows: Tensor) -> Tensor:
        u = draws.uniform(1)[:, 0]  # one draw per batch row and step, used or not
        scores = apply_processors(processors, canvas.tokens, scores)
        return categorical(scores.double().softmax(dim=-1), u[rows])

    budget = torch.full((prompt.shape[0],), max_new_tokens, device=prompt.device)
    final, calls = decode(model, Canvas.from_prompt(prompt), budget, vocab_size, choose)
    rows = [final.tokens[b, :n].tolist() for b, n in enumerate(final.lengths.tolist())]
    return Generation(
        pad_rows(rows, options.pad_id, prompt.device),
        calls,
        time.perf_counter() - start,
        lengths=final.lengths.cpu(),
    )
