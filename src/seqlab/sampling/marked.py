"""Multi-step forecasts of marked event sequences: roll a model with a value head forward.

`feed_back` is the loop every value-head forecast shares: from a prefix of tokens with a
value beside each, step j reads the model's next-token logits and next-value distribution at
the last position (`Model.marked` with a decode state, so each step feeds one pair), a
caller's `pick` chooses the next (token, value), and that pair is the next input.

`rollout_events` forecasts events: from marks `k_1 .. k_T` with their inter-event times
`τ_1 .. τ_T` it picks (k̂_j, τ̂_j) by

* ``mean``: k̂_j = argmax of the mark logits, τ̂_j = E[τ] (HoTPP's next-k baselines);
* ``sample``: k̂_j ~ softmax(logits), τ̂_j ~ p(τ | history), from `generator` when given.

The forecast times are ŝ_j = τ̂_1 + .. + τ̂_j, measured from the last prefix event. A gap
beyond the largest the model's encoder tells apart (`ValueHead.largest_input`; a mean that
overflows, or NaN, from a degenerate head) is taken as that largest one: it reads the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from seqlab.errors import ConfigError, ShapeError
from seqlab.model import Model, unwrap
from seqlab.sampling.base import eval_mode

MODES = ("mean", "sample")


Pick = Callable[[Tensor, Distribution], tuple[Tensor, Tensor]]


@torch.no_grad()
def feed_back(
    model: Model, tokens: Tensor, values: Tensor, steps: int, pick: Pick
) -> tuple[Tensor, Tensor]:
    """Roll `model` forward `steps` steps from `tokens` and `values` `[B, T]` (on its device):
    `pick(logits, distribution)` gets the next-token logits `[B, vocab]` at the last position
    and the next-value distribution (batch shape `[B, T']`, read its `[:, -1]`) and returns
    the next (token `[B]`, value `[B]`), fed back as the next input (the value in `values`'
    dtype). Returns the picked tokens and values `[B, steps]`."""
    picked_tokens, picked_values = [], []
    with eval_mode(model):
        state = model.init_state(tokens.shape[0])
        inputs = tokens, values
        for _ in range(steps):
            logits, distribution, state = model.marked(*inputs, state)
            token, value = pick(logits[:, -1], distribution)
            picked_tokens.append(token)
            picked_values.append(value)
            inputs = token[:, None], value[:, None].to(values.dtype)
    return torch.stack(picked_tokens, 1), torch.stack(picked_values, 1)


@torch.no_grad()
def rollout_events(
    model: Model,
    marks: Tensor,
    values: Tensor,
    steps: int,
    *,
    mode: str = "mean",
    generator: torch.Generator | None = None,
    mark_ids: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forecast `steps` events after each row's prefix `marks` `[B, T]` (token ids) with the
    inter-event times `values` `[B, T]` beside them.

    Returns (times `[B, steps]`: ŝ_j, the elapsed time from the last prefix event; scores
    `[B, steps, M]`: the softmax of the mark logits over `mark_ids` (M of them; all of the
    model's vocabulary when None) at each step; marks `[B, steps]`: the token ids fed back).
    """
    if mode not in MODES:
        raise ConfigError(f"rollout mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"rollout steps must be an integer >= 1, got {steps!r}")
    if marks.dim() != 2 or values.shape != marks.shape:
        raise ShapeError(
            f"expected marks and values of one shape [B, T], got {list(marks.shape)} and "
            f"{list(values.shape)}"
        )
    device = model.device
    ids = torch.arange(model.config.vocab_size, device=device)
    if mark_ids is not None:
        ids = torch.as_tensor(list(mark_ids), dtype=torch.long, device=device)
    largest = unwrap(model).value_head.largest_input()
    scores = []

    def pick(logits: Tensor, distribution: Distribution) -> tuple[Tensor, Tensor]:
        probs = logits[:, ids].double().softmax(-1)
        if mode == "mean":
            choice = probs.argmax(-1)
            gap = distribution.mean[:, -1]
        else:
            choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            gap = _sample(distribution, generator)[:, -1]
        scores.append(probs)
        return ids[choice], gap.double().nan_to_num(nan=largest).clamp(0, largest)

    picked, gaps = feed_back(model, marks.to(device), values.to(device), steps, pick)
    return gaps.cumsum(1), torch.stack(scores, 1), picked


def _sample(distribution: torch.distributions.Distribution, generator: torch.Generator | None):
    """A draw of `distribution`; with `generator`, from torch's global generator reseeded by
    one number drawn from it (restored afterwards), so the draw is a function of `generator`."""
    if generator is None:
        return distribution.sample()
    seed = int(torch.randint(2**62, (1,), generator=generator))
    devices = [generator.device] if generator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return distribution.sample()
