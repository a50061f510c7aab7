"""Multi-step forecasts of marked event sequences: roll a model with a value head forward.

From a prefix of marks `k_1 .. k_T` with their inter-event times `τ_1 .. τ_T`, step j reads
the model's next-mark logits and next-time distribution p(τ | history) at the last position
(`Model.marked` with a decode state, so each step feeds one event), picks (k̂_j, τ̂_j) and
feeds it back:

* ``mean``: k̂_j = argmax of the mark logits, τ̂_j = E[τ] (HoTPP's next-k baselines);
* ``sample``: k̂_j ~ softmax(logits), τ̂_j ~ p(τ | history), from `generator` when given.

The forecast times are ŝ_j = τ̂_1 + .. + τ̂_j, measured from the last prefix event.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seqlab.errors import ConfigError, ShapeError
from seqlab.model import Model
from seqlab.sampling.base import eval_mode

MODES = ("mean", "sample")
LARGEST_GAP = 1e30  # a non-finite mean gap (a degenerate head) is fed back as this


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
    tokens, gaps = marks.to(device), values.to(device)
    times, scores, picked = [], [], []
    elapsed = torch.zeros(marks.shape[0], dtype=torch.float64, device=device)
    with eval_mode(model):
        state = model.init_state(marks.shape[0])
        for _ in range(steps):
            logits, distribution, state = model.marked(tokens, gaps, state)
            probs = logits[:, -1, ids].double().softmax(-1)
            if mode == "mean":
                choice = probs.argmax(-1)
                gap = distribution.mean[:, -1]
            else:
                choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                gap = _sample(distribution, generator)[:, -1]
            gap = torch.nan_to_num(gap.double(), nan=LARGEST_GAP, posinf=LARGEST_GAP).clamp_min(0)
            elapsed = elapsed + gap
            times.append(elapsed)
            scores.append(probs)
            picked.append(ids[choice])
            tokens, gaps = ids[choice][:, None], gap[:, None].to(values.dtype)
    return torch.stack(times, 1), torch.stack(scores, 1), torch.stack(picked, 1)


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
