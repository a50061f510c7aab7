"""Discrete diffusion over the whole sequence: masked (MDLM) and uniform-state (UDLM).

A noise process corrupts the scored tokens at time t and scores the denoiser's x̂_0 with
the integrand of the continuous-time ELBO; the objective draws one t per group of positions
(the whole sequence here, one block in `block.py`) and runs the model bidirectionally.

    absorbing: −log p(x_0) ≤ ∫ E_{x_t} [ −α′/(1−α) Σ_{i masked} −log x̂_0^i(x_0^i) ] dt
    uniform:   −log p(x_0) ≤ ∫ E_{x_t} [ Σ_i −α′/(Nα) · ( N/x̄θ_z − N/x̄_z
                                        + Σ_{y≠z} x̄_y/x̄_z log(x̄_y x̄θ_z / (x̄_z x̄θ_y)) ) ] dt

with z = x_t^i, x̄ = Nα·onehot(x_0) + (1 − α), x̄θ = Nα·x̂_0 + (1 − α) (UDLM). Both schedules
reach α(1) = 0, so no prior term remains. Positions outside `batch.mask` are clean context:
never noised, never scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import NLL, Batch, Objective
from seqlab.objectives.noise import (
    Schedule,
    absorb,
    absorb_count,
    build_schedule,
    stratified_times,
    uniform_noise,
)
from seqlab.registry import OBJECTIVES


class Absorbing:
    """Tokens become the mask id (the data vocabulary size, one extra model token).

    SUBS parameterisation: the mask logit is dropped (−∞), and the sampler carries
    unmasked tokens over unchanged, so only masked positions carry a loss.
    """

    name = "absorbing"
    extra_tokens = 1

    def __init__(self, vocab_size: int, schedule: Schedule) -> None:
        self.vocab_size, self.schedule = vocab_size, schedule
        self.mask_id = vocab_size

    def corrupt(self, tokens: Tensor, t: Tensor, scored: Tensor) -> Tensor:
        return absorb(tokens, self.schedule.noise_rate(t), scored, self.mask_id)[0]

    def log_x0(self, logits: Tensor) -> Tensor:
        """log x̂_0 over the data vocabulary `[B, L, N]` (float32, or float64 for a double model)."""
        logits = logits[..., : self.vocab_size]
        return (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(-1)

    def terms(
        self, logits: Tensor, x_t: Tensor, tokens: Tensor, t: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        """The ELBO integrand per position `[B, L]` (zero where x_t is clean), weighted by
        −α′/(1 − α) at t, or by `weight` (the count estimator's n / k)."""
        log_x0 = self.log_x0(logits)
        cross_entropy = -log_x0.gather(-1, tokens[..., None]).squeeze(-1)
        weight = self.schedule.weight(t) if weight is None else weight
        weight = weight.to(cross_entropy.dtype)
        return torch.where(x_t == self.mask_id, weight * cross_entropy, 0.0)


class Uniform:
    """Each token is redrawn uniformly from the N data tokens with probability 1 − α(t)."""

    name = "uniform"
    extra_tokens = 0

    def __init__(self, vocab_size: int, schedule: Schedule) -> None:
        self.vocab_size, self.schedule = vocab_size, schedule

    def corrupt(self, tokens: Tensor, t: Tensor, scored: Tensor) -> Tensor:
        return uniform_noise(tokens, self.schedule.alpha(t), scored, self.vocab_size)[0]

    def log_x0(self, logits: Tensor) -> Tensor:
        return logits[..., : self.vocab_size].double().log_softmax(-1)

    def terms(self, logits: Tensor, x_t: Tensor, tokens: Tensor, t: Tensor) -> Tensor:
        """The UDLM integrand per position `[B, L]`, formed in float64: near t = 1 it is a
        difference of nearly equal terms times a large decay rate."""
        n = self.vocab_size
        alpha = self.schedule.alpha(t).double()[..., None]
        x0_hat = self.log_x0(logits).exp()
        bar = n * alpha * F.one_hot(tokens, n).double() + (1 - alpha)
        bar_model = n * alpha * x0_hat + (1 - alpha)
        z = x_t[..., None]
        bar_z, bar_model_z = bar.gather(-1, z), bar_model.gather(-1, z)
        log_ratio = bar.log() - bar_z.log() + bar_model_z.log() - bar_model.log()
        others = torch.ones_like(bar, dtype=torch.bool).scatter(-1, z, False)
        kl = (bar / bar_z * log_ratio).where(others, 0.0).sum(-1, keepdim=True)
        integrand = (n / bar_model_z - n / bar_z + kl).squeeze(-1)
        return self.schedule.decay(t).double() / n * integrand


PROCESSES = {p.name: p for p in (Absorbing, Uniform)}


class Diffusion(Objective):
    """Full-sequence discrete diffusion: one t per sequence, a bidirectional denoiser.

    `eval_samples` t draws per sequence estimate the ELBO in `nll` (low-discrepancy over the
    batch and the draws; deterministic given torch's RNG state).

    `estimator="count"` (absorbing noise) draws the number of masked tokens per group instead
    of t (`noise.absorb_count`): the same bound, lower variance, and exact at block size 1.

    `num_classes > 0` conditions on `batch.condition`: the class is a clean prefix token
    (ids after the mask token: class c, then a null class), dropped to the null class with
    probability `label_dropout` in training so one model also denoises unconditionally, as
    classifier-free guidance needs. Batches without a condition are scored unconditionally.
    """

    bound = True
    layout = Layout.BIDIRECTIONAL
    noise: str  # a key of PROCESSES, set by each subclass

    def __init__(
        self,
        *,
        schedule: str = "loglinear",
        eval_samples: int = 4,
        estimator: str = "time",
        num_classes: int = 0,
        label_dropout: float = 0.1,
    ) -> None:
        noise = self.noise
        if noise not in PROCESSES:
            raise ConfigError(f"unknown noise {noise!r}; choose one of {sorted(PROCESSES)}")
        if eval_samples < 1:
            raise ConfigError(f"eval_samples must be >= 1, got {eval_samples}")
        self.schedule = build_schedule(schedule)
        if num_classes < 0 or not 0 <= label_dropout <= 1:
            raise ConfigError(
                f"need num_classes >= 0 and label_dropout in [0, 1], got {num_classes}, "
                f"{label_dropout}"
            )
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.extra_tokens = PROCESSES[noise].extra_tokens + (num_classes + 1 if num_classes else 0)
        if estimator not in ("time", "count") or (estimator == "count" and noise != "absorbing"):
            raise ConfigError(
                f"estimator must be 'time', or 'count' with absorbing noise; got {estimator!r} "
                f"with {noise} noise"
            )
        self.eval_samples, self.estimator = eval_samples, estimator
        self.process: Absorbing | Uniform | None = None

    def bind(self, vocab_size: int) -> Diffusion:
        super().bind(vocab_size)
        self.process = PROCESSES[self.noise](vocab_size, self.schedule)
        return self

    @property
    def mask_id(self) -> int:
        """The absorbing mask token (the data vocabulary size)."""
        if self.noise != "absorbing":
            raise SeqlabError(f"{self.noise} noise has no mask token")
        return self._bound().mask_id

    def class_prefix(self, condition: Tensor | None, batch_size: int, device: torch.device):
        """The class token `[B, 1]` (None without classes); no condition: the null class."""
        if not self.num_classes:
            return None
        null = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        labels = null if condition is None else condition.to(device=device, dtype=torch.long)
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise SeqlabError(
                f"class labels must lie in [0, {self.num_classes}] (the last is "
                f"the null class), got {labels.tolist()}"
            )
        return (self._bound().vocab_size + PROCESSES[self.noise].extra_tokens + labels)[:, None]

    def _bound(self) -> Absorbing | Uniform:
        if self.process is None:
            raise SeqlabError(f"objective {self.name!r} must be bound to a vocabulary first")
        return self.process

    # The parts a block-wise objective changes: groups of positions sharing one t, the
    # denoiser's context, and the range of training times.

    def groups(self, length: int, device: torch.device) -> Tensor:
        """The group (one t each) of every position `[L]`: one group for the sequence."""
        return torch.zeros(length, dtype=torch.long, device=device)

    def denoise(
        self, model: Model, x_t: Tensor, tokens: Tensor, prefix: Tensor | None = None
    ) -> Tensor:
        """Logits `[B, L, V]` of x̂_0 for every position of the noised sequence, reading the
        class token `prefix [B, 1]` first when given."""
        if prefix is None:
            return model(x_t, layout=self.layout)[0]
        return model(torch.cat([prefix, x_t], dim=1), layout=self.layout)[0][:, 1:]

    def train_times(self, n: int, device: torch.device) -> Tensor:
        return stratified_times(n, device=device)

    def elbo_terms(
        self, model: Model, batch: Batch, t: Tensor, condition: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """ELBO integrand `[B, L]` at per-position times `t [B, L]` given class labels
        `condition` (None: unconditional), and the scored mask."""
        process = self._bound()
        tokens = batch.tokens
        scored = torch.ones_like(tokens, dtype=torch.bool) if batch.mask is None else batch.mask
        weight = None
        if self.estimator == "count":
            groups = self.groups(tokens.shape[1], tokens.device)
            x_t, weight = absorb_count(tokens, t, scored, groups, process.mask_id)
        else:
            x_t = process.corrupt(tokens, t, scored)
        prefix = self.class_prefix(condition, tokens.shape[0], tokens.device)
        logits = self.denoise(model, x_t, tokens, prefix)
        if weight is None:
            terms = process.terms(logits, x_t, tokens, t)
        else:  # the count estimator (absorbing noise only)
            terms = process.terms(logits, x_t, tokens, t, weight)
        return terms.where(scored, 0.0), scored

    def _times(self, draws: Tensor, batch: Batch) -> Tensor:
        """Per-position times `[B, L]` from one draw per (row, group) `[B * G]`."""
        groups = self.groups(batch.tokens.shape[1], batch.tokens.device)
        return draws.view(batch.tokens.shape[0], -1)[:, groups]

    def n_groups(self, length: int) -> int:
        return int(self.groups(length, torch.device("cpu")).max()) + 1

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        b, length = batch.tokens.shape
        t = self._times(self.train_times(b * self.n_groups(length), batch.tokens.device), batch)
        condition = batch.condition
        if self.num_classes and condition is not None and self.label_dropout > 0:
            dropped = torch.rand(b, device=condition.device) < self.label_dropout
            condition = condition.masked_fill(dropped, self.num_classes)
        terms, scored = self.elbo_terms(model, batch, t, condition)
        loss = terms.sum() / scored.sum().clamp(min=1)
        return loss.float(), {"nll_bound": loss.detach().item()}

    @torch.no_grad()
    def nll(self, model: Model, batch: Batch) -> NLL:
        b, length = batch.tokens.shape
        k = self.eval_samples
        draws = stratified_times(k * b * self.n_groups(length), device=batch.tokens.device)
        nats, scored = 0.0, None
        for sample in draws.chunk(k):
            t = self._times(sample, batch)
            terms, scored = self.elbo_terms(model, batch, t, batch.condition)
            nats += float(terms.double().sum())
        return NLL(nats / k, int(scored.sum()), bound=True)

    @torch.no_grad()
    def predict(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """All scored positions noised at once (masked, or redrawn uniformly), argmax x̂_0."""
        process = self._bound()
        tokens = batch.tokens
        scored = torch.ones_like(tokens, dtype=torch.bool) if batch.mask is None else batch.mask
        t = torch.ones(tokens.shape, dtype=torch.float64, device=tokens.device)
        x_t = process.corrupt(tokens, t, scored)
        prefix = self.class_prefix(batch.condition, tokens.shape[0], tokens.device)
        guess = process.log_x0(self.denoise(model, x_t, tokens, prefix)).argmax(-1)
        return torch.where(scored, guess, tokens), scored


@OBJECTIVES.register("masked_diffusion")
class MaskedDiffusion(Diffusion):
    """Absorbing-state diffusion (MDLM: SUBS parameterisation, continuous-time ELBO bound)."""

    noise = "absorbing"


@OBJECTIVES.register("uniform_diffusion")
class UniformDiffusion(Diffusion):
    """Uniform-state diffusion (UDLM: closed-form posterior, continuous-time ELBO bound)."""

    noise = "uniform"
