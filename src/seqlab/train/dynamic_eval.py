"""Dynamic evaluation (Krause et al., 2018, "Dynamic Evaluation of Neural Sequence Models"):
score a held-out sequence segment by segment, adapting the weights to each segment after
scoring it.

Segment i (inputs x_{s_i} .. x_{s_{i+1}−1}, their next tokens as targets) is scored with the
weights θ_{i−1}, from the state carried out of segment i − 1 (detached: truncated BPTT, the
same state a static evaluation of the same segments carries); its NLL counts; then

    θ_i = θ_{i−1} − η ∇_θ ℓ_i / (RMS + ε) + λ r ⊙ (θ_0 − θ_{i−1})

with ℓ_i the segment's mean NLL per token and θ_0 the trained weights ("RMS with a global
prior"). RMS = √MS per parameter, MS the mean squared gradient of ℓ over segments of
training batches, collected once before scoring. The decay towards θ_0 is scaled by
r = min(RMS / avg RMS, 1/λ) (avg: the mean over parameter tensors of their mean RMS; the cap
keeps λ r ≤ 1, so the decay never overshoots θ_0). With η = 0 the weights stay θ_0 exactly
and the score is the static one.

An attention layer's KV cache is carried within its window, and at most `context` tokens back
(default: the training length minus a segment, so no query reads farther than it was trained
to); a recurrent layer carries its whole state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.config import from_dict, load_config, parse_value
from seqlab.data.tasks import build_task
from seqlab.data.tasks.text import TextTask
from seqlab.errors import ConfigError, DataError
from seqlab.io import load
from seqlab.mixers.attention import Attention, KVCache
from seqlab.model import Model, ModelState
from seqlab.objectives.base import NLL
from seqlab.state import map_state


@dataclass(frozen=True)
class DynamicOptions:
    """Options of dynamic evaluation (`seqlab eval RUN --dynamic lr=...,decay=...`).

    Keys:
        lr: η, the step on the RMS-normalised gradient of a segment's mean NLL (required)
        decay: λ, the pull towards the trained weights, scaled per parameter by RMS / avg RMS
        segment: tokens scored, then adapted on, at a time
        ms_batches: training batches whose segment gradients give the RMS statistics
        eps: ε in the normaliser RMS + ε
        context: tokens of attention KV cache carried into a segment (null: the run's
            training seq_len minus one segment)
    """

    lr: float
    decay: float = 0.0
    segment: int = 32
    ms_batches: int = 10
    eps: float = 2e-5
    context: int | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--dynamic {name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"--dynamic eps must be a finite number > 0, got {self.eps}")
        if self.segment < 1 or self.ms_batches < 1:
            raise ConfigError(
                f"--dynamic segment and ms_batches must be >= 1, got segment={self.segment} "
                f"ms_batches={self.ms_batches}"
            )
        if self.context is not None and self.context < 0:
            raise ConfigError(f"--dynamic context must be >= 0, got {self.context}")


def parse_dynamic_options(text: str) -> DynamicOptions:
    """`"lr=1e-4,decay=0.01,segment=32"` -> DynamicOptions; a ConfigError names the syntax
    and the valid keys."""
    keys = "lr, decay, segment, ms_batches, eps, context"
    values: dict[str, object] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value or key in values:
            raise ConfigError(
                f"--dynamic takes KEY=VALUE pairs separated by commas, each key once (keys: "
                f"{keys}; lr required), got {text!r}"
            )
        values[key] = parse_value(value)
    if "lr" not in values:
        raise ConfigError(f"--dynamic needs lr=VALUE (keys: {keys}), got {text!r}")
    return from_dict(DynamicOptions, values, "dynamic.")


def _carry(model: Model, state: ModelState, context: int | None) -> ModelState:
    """The state detached from this segment's graph, attention caches cut to `context`."""
    state = map_state(lambda t: t.detach(), state)
    if context is None:
        return state
    return tuple(
        layer.keep_last(context)
        if isinstance(block.mixer, Attention) and isinstance(layer, KVCache)
        else layer
        for block, layer in zip(model.blocks, state, strict=True)
    )


def segment_losses(
    model: Model, tokens: Tensor, segment: int, *, context: int | None = None
) -> Iterator[tuple[Tensor, int]]:
    """Summed next-token NLL (nats, a graph to differentiate) and target count of each segment
    of `tokens` `[B, N]`, in order, the state carried across segments. Lazy: whatever the
    caller does to the weights between two segments applies to the next."""
    state = model.init_state(tokens.shape[0])
    for start in range(0, tokens.shape[1] - 1, segment):
        chunk = tokens[:, start : start + segment + 1]
        logits, state = model(chunk[:, :-1], state)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        targets = chunk[:, 1:]
        nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        state = _carry(model, state, context)
        yield nats, targets.numel()


def adapted_parameters(model: Model) -> list[Tensor]:
    """The parameters dynamic evaluation adapts: every trainable one (tied ones once)."""
    return [p for p in model.parameters() if p.requires_grad]


def gradient_rms(
    model: Model,
    batches: Iterable[Tensor],
    segment: int,
    *,
    context: int | None = None,
) -> list[Tensor]:
    """√MS for each of `adapted_parameters(model)`: MS is the mean over every segment of
    `batches` (token windows `[B, L]`, each scored in segments with its state carried) of the
    squared gradient of the segment's mean NLL per token."""
    params = adapted_parameters(model)
    squares = [torch.zeros_like(p) for p in params]
    count = 0
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        for tokens in batches:
            for nats, targets in segment_losses(model, tokens, segment, context=context):
                grads = torch.autograd.grad(nats / targets, params, allow_unused=True)
                for square, grad in zip(squares, grads, strict=True):
                    if grad is not None:
                        square.add_(grad.detach().square())
                count += 1
    model.train(was_training)
    return [(square / max(count, 1)).sqrt() for square in squares]


class RMSUpdate:
    """The update rule: θ ← θ − η g / (RMS + ε) + λ r ⊙ (θ_0 − θ), r = min(RMS / avg RMS, 1/λ),
    applied in place to `params` (θ_0: their values when this is built; `restore` puts them
    back). `rms` holds one tensor per parameter, of its shape."""

    def __init__(
        self,
        params: Sequence[Tensor],
        rms: Sequence[Tensor],
        *,
        lr: float,
        decay: float,
        eps: float,
    ) -> None:
        self.params = list(params)
        self.initial = [p.detach().clone() for p in self.params]
        self.lr = lr
        self.normaliser = [r + eps for r in rms]
        mean_rms = float(sum(r.mean() for r in rms) / max(len(rms), 1))
        scale = decay / mean_rms if mean_rms > 0 else 0.0
        self.decay_rate = [(scale * r).clamp(max=1.0) for r in rms]  # λ r, at most 1

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor | None]) -> None:
        """One update from the gradients of the segment's mean loss (None: no gradient)."""
        for p, grad, p0, normaliser, rate in zip(
            self.params, grads, self.initial, self.normaliser, self.decay_rate, strict=True
        ):
            change = rate * (p0 - p)
            if grad is not None:
                change -= self.lr * grad / normaliser
            p.add_(change)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the trained weights θ_0 back."""
        for p, p0 in zip(self.params, self.initial, strict=True):
            p.copy_(p0)


def segmented_nll(
    model: Model,
    tokens: Tensor,
    segment: int,
    *,
    context: int | None = None,
    update: RMSUpdate | None = None,
) -> NLL:
    """The NLL of `tokens` `[B, N]` scored segment by segment with the state carried; with
    `update`, the weights adapt on each segment after it is scored (dynamic evaluation),
    without it they stay (the static score of the same segmentation). Both build the same
    graph, so an update that changes nothing gives the static score bit for bit."""
    was_training = model.training
    model.eval()
    nats_total, count = 0.0, 0
    with torch.enable_grad():
        for nats, targets in segment_losses(model, tokens, segment, context=context):
            nats_total += float(nats.detach().double())
            count += targets
            if update is not None:
                update.step(torch.autograd.grad(nats / targets, update.params, allow_unused=True))
    model.train(was_training)
    return NLL(nats_total, count)


def dynamic_evaluate(
    model: Model,
    tokens: Tensor,
    train_batches: Iterable[Tensor],
    options: DynamicOptions,
) -> tuple[NLL, NLL]:
    """(static, dynamic) NLL of the sequence `tokens` `[N]` in segments of `options.segment`,
    the RMS statistics from `train_batches` (token windows `[B, L]`). The model's weights are
    the trained ones again on return."""
    device = model.device
    tokens = tokens.reshape(1, -1).to(device)
    if tokens.shape[1] < 2:
        raise DataError(f"dynamic evaluation needs at least 2 tokens, got {tokens.shape[1]}")
    static = segmented_nll(model, tokens, options.segment, context=options.context)
    rms = gradient_rms(
        model, (b.to(device) for b in train_batches), options.segment, context=options.context
    )
    update = RMSUpdate(
        adapted_parameters(model), rms, lr=options.lr, decay=options.decay, eps=options.eps
    )
    try:
        dynamic = segmented_nll(
            model, tokens, options.segment, context=options.context, update=update
        )
    finally:
        update.restore()
    return static, dynamic


def check_dynamic_model(model: Model, objective: str) -> None:
    """A ConfigError unless the run is an AR model that decodes from a carried state."""
    if objective != "ar":
        raise ConfigError(
            f"--dynamic scores next-token predictions: it needs a run with objective ar, "
            f"got {objective}"
        )
    for i, block in enumerate(model.blocks):
        if block.mixer.state_kind == "none" or block.mixer.noncausal_prefix:
            raise ConfigError(
                f"--dynamic carries a causal state across segments; layer {i}'s mixer "
                f"{type(block.mixer).__name__} has none"
            )


def dynamic_eval_run(
    run_dir: str | Path,
    options: DynamicOptions,
    *,
    split: str = "test",
    max_tokens: int | None = None,
    overrides: dict[str, object] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float | int | str]:
    """Dynamic and static bits per byte of a trained text run on `split` (its first
    `max_tokens` targets), read as one sequence; the run's files are only read. `context`
    None becomes the run's training seq_len minus one segment."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    task = build_task(config)
    if not isinstance(task, TextTask) or task.corpus is None:
        raise ConfigError(
            f"--dynamic scores a text split as one sequence; the run's task is "
            f"{config.task.name} (data.format: {config.data.format}), not text windows"
        )
    model = load(run_dir, device)
    check_dynamic_model(model, config.objective.name)
    split_tokens = task.corpus.tokens(split)
    length = len(split_tokens) if max_tokens is None else min(len(split_tokens), max_tokens + 1)
    tokens = torch.from_numpy(np.asarray(split_tokens[:length], dtype=np.int64))
    if options.context is None:
        options = replace(options, context=max(config.data.seq_len - options.segment, 0))
    batches = (
        task.batch("train", step, config.train.batch_size, seed=config.train.seed).tokens
        for step in range(options.ms_batches)
    )
    static, dynamic = dynamic_evaluate(model, tokens, batches, options)
    bytes_per_token = task.bytes_per_token(split)
    static_bpb = static.bits_per_byte(bytes_per_token)
    dynamic_bpb = dynamic.bits_per_byte(bytes_per_token)
    return {
        "split": split,
        "tokens": dynamic.tokens,
        **asdict(options),
        "static_nll": static.per_token,
        "dynamic_nll": dynamic.per_token,
        "static_bits_per_byte": static_bpb,
        "dynamic_bits_per_byte": dynamic_bpb,
        "gain_bits_per_byte": static_bpb - dynamic_bpb,
    }
