"""`check_objective`: invariants of a generation paradigm on a tiny float64 attention model.

The model is a 2-layer attention model (d_model 32, 4 heads) over a data vocabulary of 7
(plus the objective's extra tokens), scoring 3 sequences of 9 tokens.

`source_kept` is the sequence-to-sequence contract: positions outside `batch.mask` are a
source (a clean prefix, DiffuSeq's partial noising) that no paradigm may corrupt or score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.model import Model, build_model
from seqlab.objectives.base import Batch, Objective
from seqlab.registry import OBJECTIVES, Entry
from seqlab.testing.report import Invariant, Report, run_invariants

VOCAB = 7
BATCH, LENGTH = 3, 9
SOURCE = 4  # the unscored prefix of `scored_mask`
SOURCE_DRAWS = 4


@dataclass
class ObjectiveSubject:
    entry: Entry
    options: dict[str, Any] = field(default_factory=dict)

    def objective(self, **changes: Any) -> Objective:
        return self.entry.build(**{**self.options, **changes}).bind(VOCAB)

    def model(self, objective: Objective, dtype: torch.dtype = torch.float64) -> Model:
        config = ModelConfig(
            mixer="attention",
            d_model=32,
            n_layers=2,
            n_heads=4,
            vocab_size=objective.model_vocab_size(VOCAB),
        )
        return build_model(config).to(dtype)


def objective_subject(name_or_class: str | type[Objective], options: dict) -> ObjectiveSubject:
    if isinstance(name_or_class, str):
        entry = OBJECTIVES.get(name_or_class)
    elif isinstance(name_or_class, type):
        entry = OBJECTIVES.entry_for(name_or_class)
    else:
        raise ConfigError(
            f"check_objective takes an objective name, an import path or an Objective "
            f"subclass, got {name_or_class!r}"
        )
    subject = ObjectiveSubject(entry, dict(options))
    subject.objective()  # unknown or invalid options are the caller's error: raise them here
    return subject


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, LENGTH))


def scored_mask() -> torch.Tensor:
    """Score the last 5 positions of each sequence (the first 4 are clean context)."""
    mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    mask[:, SOURCE:] = True
    return mask


def check_loss_and_gradient(s: ObjectiveSubject) -> None:
    """loss is a finite scalar whose gradient is finite and nonzero (float32 model)."""
    objective = s.objective()
    model = s.model(objective, torch.float32)
    for mask in (None, scored_mask()):
        model.zero_grad()
        loss, metrics = objective.loss(model, Batch(tokens(), mask))
        assert loss.dim() == 0, f"loss has shape {list(loss.shape)}, expected a scalar"
        assert torch.isfinite(loss), f"loss is {loss.item()}"
        bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
        assert not bad, f"metrics {bad} are not finite: {metrics}"
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads, "no parameter receives a gradient"
        assert all(torch.isfinite(g).all() for g in grads), "a gradient is not finite"
        assert any(g.abs().max() > 0 for g in grads), "every gradient is zero"


def check_nll_reported(s: ObjectiveSubject) -> None:
    """nll gives finite non-negative nats over at most the scored tokens, with `bound` as
    the objective declares; masking positions out scores fewer tokens."""
    objective = s.objective()
    model = s.model(objective)
    batch = tokens()
    full = objective.nll(model, Batch(batch))
    masked = objective.nll(model, Batch(batch, scored_mask()))
    for result, scored in ((full, BATCH * LENGTH), (masked, int(scored_mask().sum()))):
        assert math.isfinite(result.nats) and result.nats >= 0, f"nll is {result.nats} nats"
        assert 0 < result.tokens <= scored, f"{result.tokens} tokens scored of {scored} given"
        assert result.bound == objective.bound, (
            f"NLL.bound is {result.bound}, the objective declares bound = {objective.bound}"
        )
    assert masked.tokens < full.tokens, (
        f"the mask scores {masked.tokens} tokens, the full batch {full.tokens}"
    )


def check_nll_deterministic(s: ObjectiveSubject) -> None:
    """The same torch seed gives the same nll (its randomness comes from torch's RNG)."""
    objective = s.objective()
    model = s.model(objective)
    batch = Batch(tokens(), scored_mask())
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(objective.nll(model, batch))
    assert results[0] == results[1], f"nll under one seed: {results[0]} then {results[1]}"


def check_nll_matches_loss(s: ObjectiveSubject) -> None:
    """For an exact (not bound) objective, under one seed the loss's next-token NLL (its
    `nll` metric, else the loss) equals nll().per_token in float64, with and without a mask."""
    objective = s.objective()
    model = s.model(objective)
    batch = tokens()
    for mask in (None, scored_mask()):
        torch.manual_seed(3)
        with torch.no_grad():
            loss, metrics = objective.loss(model, Batch(batch, mask))
        torch.manual_seed(3)
        result = objective.nll(model, Batch(batch, mask))
        value = float(metrics.get("nll", loss.item()))
        assert math.isclose(value, result.per_token, rel_tol=1e-9), (
            f"loss gives {value!r} nats per token, nll {result.per_token!r} "
            f"({'masked' if mask is not None else 'unmasked'} batch)"
        )


def _training_inputs(
    objective: Objective, model: Model, batch: Batch, draws: int
) -> list[torch.Tensor]:
    """The token inputs of every model forward in `draws` training losses (seeds 0, 1, ...)."""
    inputs: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _, args: inputs.append(args[0].clone()))
    try:
        for seed in range(draws):
            torch.manual_seed(seed)
            objective.loss(model, batch)
    finally:
        hook.remove()
    return inputs


def _loss_with_fixed_logits(
    objective: Objective, model: Model, batch: Batch, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss (seed 0) when the model outputs `logits[:, :T]` whatever its input
    of length T, and its gradient with respect to `logits`."""

    def replace(_module, args, output):
        return logits[:, : args[0].shape[1]], output[1]

    hook = model.register_forward_hook(replace)
    try:
        torch.manual_seed(0)
        loss = objective.loss(model, batch)[0]
    finally:
        hook.remove()
    return loss.detach(), torch.autograd.grad(loss, logits)[0]


def check_source_kept(s: ObjectiveSubject) -> None:
    """Positions outside `batch.mask` (a source prefix of 4 tokens) are never noised and
    never scored. Every model forward of 4 training losses reads each row's source unchanged
    (at one offset); and with logits that ignore the input, another source gives the same
    loss and the same gradient with respect to the logits: no logit is scored against a
    source token (float64)."""
    objective = s.objective()
    model = s.model(objective)
    batch = Batch(tokens(), scored_mask())
    source = batch.tokens[:, :SOURCE]
    for x in _training_inputs(objective, model, batch, SOURCE_DRAWS):
        found = any(
            torch.equal(x[:, offset : offset + SOURCE], source)
            for offset in range(x.shape[1] - SOURCE + 1)
        )
        assert found, (
            f"a training forward reads {x.tolist()}, which does not hold the unscored source "
            f"{source.tolist()} unchanged"
        )
    vocab = objective.model_vocab_size(VOCAB)
    logits = torch.randn(BATCH, 2 * LENGTH + 2, vocab, dtype=torch.float64, requires_grad=True)
    other = batch.tokens.clone()
    other[:, :SOURCE] = (other[:, :SOURCE] + 1 + torch.arange(SOURCE)) % VOCAB
    loss, grad = _loss_with_fixed_logits(objective, model, batch, logits)
    other_loss, other_grad = _loss_with_fixed_logits(
        objective, model, Batch(other, batch.mask), logits
    )
    assert torch.isclose(loss, other_loss, rtol=1e-12, atol=1e-12), (
        f"the loss scores source tokens: {loss.item()!r}, with another source {other_loss.item()!r}"
    )
    assert torch.allclose(grad, other_grad, rtol=1e-12, atol=1e-12), (
        "the loss scores source tokens: its gradient with respect to the logits changes "
        "with the source"
    )


def generate_mask() -> torch.Tensor:
    """Scored positions that are not a suffix and differ per row: 4 5 7 8 / 2 3 6 / 6 7 8."""
    mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    for row, positions in enumerate(([4, 5, 7, 8], [2, 3, 6], [6, 7, 8])):
        mask[row, positions] = True
    return mask


def check_generate_blind(s: ObjectiveSubject) -> None:
    """`generate` fills the scored positions from the unscored ones alone: other values at
    the scored positions give the same output, the unscored positions come back unchanged,
    and every filled token is a data token (scored positions not a suffix, per row). An
    objective that `stops_early` may leave scored positions unfilled, with an id outside
    the data vocabulary (never a target)."""
    objective = s.objective()
    model = s.model(objective).eval()
    batch = Batch(tokens(), generate_mask())
    other = torch.where(batch.mask, (batch.tokens + 1) % VOCAB, batch.tokens)
    predictions, scored = objective.generate(model, batch)
    again, _ = objective.generate(model, Batch(other, batch.mask))
    assert predictions.shape == batch.tokens.shape and scored.shape == batch.tokens.shape
    assert not bool((scored & ~batch.mask).any()), "generate scores an unscored position"
    assert torch.equal(predictions[~scored], batch.tokens[~scored]), (
        "generate changes unscored positions"
    )
    assert torch.equal(predictions, again), (
        f"generate reads the true values of scored tokens: {predictions.tolist()} becomes "
        f"{again.tolist()} when only they change"
    )
    filled = predictions[scored]
    data = (filled >= 0) & (filled < VOCAB)
    allowed = data | (filled >= VOCAB) if objective.stops_early else data
    assert bool(allowed.all()), f"generated ids {filled.tolist()}"


def _generates(s: ObjectiveSubject) -> str | None:
    objective = s.objective()
    if not objective.generates:
        return "the objective defines no generate (or its noise has no mask state)"
    return None


def _exact(s: ObjectiveSubject) -> str | None:
    if s.objective().bound:
        return "a bound objective's loss is a stochastic estimate of its nll"
    return None


def check_block_size_one(s: ObjectiveSubject) -> None:
    """With block_size 1 every masked token reads exactly its clean prefix: the ELBO terms
    with everything noised equal the chain rule of a causal pass over [x_<i, MASK]
    (shifted: the AR next-token distribution), to 1e-12 in float64; with the count
    estimator, nll is exactly their sum."""
    objective = s.objective(block_size=1)
    model = s.model(objective)
    batch = tokens()
    t = torch.ones(batch.shape, dtype=torch.float64)
    with torch.no_grad():
        terms = objective.elbo_terms(model, Batch(batch), t)[0]
        expected = torch.empty_like(terms)
        mask = torch.full((BATCH, 1), objective.mask_id)
        for i in range(LENGTH):
            if getattr(objective, "shift", False) and i:
                logits = model(batch[:, :i], layout=Layout.CAUSAL)[0]
            else:
                logits = model(torch.cat([batch[:, :i], mask], dim=1), layout=Layout.CAUSAL)[0]
            logp = logits[:, -1, :VOCAB].log_softmax(-1)
            expected[:, i] = -logp.gather(-1, batch[:, i : i + 1]).squeeze(-1)
    torch.testing.assert_close(terms, expected, rtol=1e-12, atol=1e-12)
    if "estimator" in s.entry.parameters():
        counted = s.objective(block_size=1, estimator="count")
        with torch.no_grad():
            total = counted.elbo_terms(model, Batch(batch), t)[0].sum()
        result = counted.nll(model, Batch(batch))
        assert math.isclose(result.nats, float(total), rel_tol=1e-12), (
            f"count estimator: nll {result.nats!r} nats, chain rule {float(total)!r}"
        )
        assert result.tokens == BATCH * LENGTH and result.bound


def _block_size_one_applies(s: ObjectiveSubject) -> str | None:
    if "block_size" not in s.entry.parameters():
        return "the objective has no block_size option"
    objective = s.objective(block_size=1)
    if not hasattr(objective, "elbo_terms"):
        return "the objective has no elbo_terms to compare with the chain rule"
    if getattr(objective, "noise", "absorbing") != "absorbing":
        return "the chain-rule comparison needs absorbing noise (a mask token)"
    return None


OBJECTIVE_INVARIANTS: tuple[Invariant[ObjectiveSubject], ...] = (
    Invariant(
        "loss_and_gradient",
        "loss is a finite scalar with finite, nonzero gradients",
        check_loss_and_gradient,
    ),
    Invariant(
        "nll_reported",
        "nll is finite, non-negative, counts scored tokens and flags bounds as declared",
        check_nll_reported,
    ),
    Invariant(
        "nll_deterministic",
        "the same torch seed gives the same nll",
        check_nll_deterministic,
    ),
    Invariant(
        "nll_matches_loss",
        "an exact objective's loss equals nll per token under one seed (float64)",
        check_nll_matches_loss,
        _exact,
    ),
    Invariant(
        "source_kept",
        "the unscored source is never noised in the model's input and never scored",
        check_source_kept,
    ),
    Invariant(
        "generate_blind",
        "generate fills scored positions from the unscored ones alone, which it keeps",
        check_generate_blind,
        _generates,
    ),
    Invariant(
        "block_size_one_is_ar",
        "block_size 1 equals the autoregressive chain rule (float64, 1e-12)",
        check_block_size_one,
        _block_size_one_applies,
    ),
)
OBJECTIVE_INVARIANT_NAMES: tuple[str, ...] = tuple(inv.name for inv in OBJECTIVE_INVARIANTS)


def check_objective(
    name_or_class: str | type[Objective],
    *,
    only: Iterable[str] | None = None,
    raise_on_failure: bool = True,
    **options: Any,
) -> Report:
    """Run every objective invariant that applies; return the Report (see `check_mixer` for
    `only` and `raise_on_failure`). `options` go to the objective's constructor."""
    subject = objective_subject(name_or_class, options)
    return run_invariants(
        "objective",
        repr(subject.entry.name),
        subject,
        OBJECTIVE_INVARIANTS,
        only=only,
        raise_on_failure=raise_on_failure,
    )
