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

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import NLL, Batch, Objective, scored_mask
from seqlab.objectives.noise import (
    Hyperschedule,
    Schedule,
    absorb,
    absorb_count,
    build_hyperschedule,
    build_schedule,
    stratified_times,
    uniform_noise,
    uniform_posterior,
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


def uniform_integrand(x0_hat: Tensor, x_t: Tensor, tokens: Tensor, keep: Tensor) -> Tensor:
    """The bracket of the UDLM integrand per position `[B, L]` in float64:

        N/x̄θ_z − N/x̄_z + Σ_{y≠z} x̄_y/x̄_z log(x̄_y x̄θ_z / (x̄_z x̄θ_y)),

    x̄ = N·u·onehot(x_0) + (1 − u), x̄θ = N·u·x̂_0 + (1 − u), z = x_t (a data token), u = `keep`
    `[B, L]` (the probability that uniform noise left the token alone). Terms with x̄_y = 0
    (u = 1) are 0, so the bracket stays finite at u = 1."""
    n = x0_hat.shape[-1]
    u = keep.double()[..., None]
    bar = n * u * F.one_hot(tokens, n).double() + (1 - u)
    bar_model = n * u * x0_hat + (1 - u)
    z = x_t[..., None]
    bar_z, bar_model_z = bar.gather(-1, z), bar_model.gather(-1, z)
    log_ratio = bar_model_z.log() - bar_model.log() - bar_z.log()
    others = torch.ones_like(bar, dtype=torch.bool).scatter(-1, z, False)
    kl = ((torch.xlogy(bar, bar) + bar * log_ratio) / bar_z).where(others, 0.0)
    return (n / bar_model_z - n / bar_z + kl.sum(-1, keepdim=True)).squeeze(-1)


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
        x0_hat = self.log_x0(logits).exp()
        integrand = uniform_integrand(x0_hat, x_t, tokens, self.schedule.alpha(t))
        return self.schedule.decay(t).double() / self.vocab_size * integrand


class Hybrid:
    """Absorbing and uniform noise together (Fathi et al., 2025): a token is masked, or
    redrawn uniformly from the N data tokens, and a masked token stays masked.

    A process is given by a(t), the probability that a token is not masked, and u(t), the
    probability that uniform noise has not touched an unmasked token:

        q_t(mask | x_0) = 1 − a,    q_t(y | x_0) = a · p_u(y),    p_u = u·onehot(x_0) + (1 − u)/N

    Its rates: a data token is masked at λ_a = −a′/a and redrawn at λ_u = −u′/u (to each
    data token at λ_u/N). The continuous-time ELBO (the path-measure KL to the reverse
    process whose rates plug x̂_0 into q_t, as MDLM and UDLM do) is ∫_0^1 E_{x_t}[f] dt with

        f(mask) = λ_a · a/(1 − a) · KL(p_u(x_0) ‖ p_u(x̂_0)),   p_u(x̂_0) = u·x̂_0 + (1 − u)/N
        f(z)    = λ_u/N · [UDLM bracket at keep u] (see `uniform_integrand`), z a data token

    The mask term: the mask's marginal does not depend on x_0, so the rate ratios reduce to
    the KL between the two data distributions; the data term is UDLM's with α → u. With
    u = 1 the mask term is −α′/(1 − α) · (−log x̂_0(x_0)), MDLM's; with a = 1 the data term
    is UDLM's. Both variants reach a(1) u(1) = 0 with a prior that does not depend on x_0,
    so no prior term remains.

    Corruption draws one r ~ U[0, 1) per token (and one uniform token where u can be < 1):
    masked if r < 1 − a, redrawn if r ≥ 1 − a + a·u, else kept: the same draws as `absorb`
    at u = 1 and as `uniform_noise` at a = 1.
    """

    extra_tokens = 1
    name: str

    def __init__(self, vocab_size: int, schedule: Schedule) -> None:
        self.vocab_size, self.schedule = vocab_size, schedule
        self.mask_id = vocab_size

    def mask_rate(self, t: Tensor) -> Tensor:
        """1 − a(t)."""
        raise NotImplementedError

    def keep(self, t: Tensor) -> Tensor:
        """u(t)."""
        raise NotImplementedError

    def mask_weight(self, t: Tensor) -> Tensor:
        """λ_a · a / (1 − a)."""
        raise NotImplementedError

    def uniform_rate(self, t: Tensor) -> Tensor:
        """λ_u."""
        raise NotImplementedError

    @property
    def uniform(self) -> bool:
        """Whether uniform noise acts at all (else this is absorbing noise)."""
        raise NotImplementedError

    def corrupt(self, tokens: Tensor, t: Tensor, scored: Tensor) -> Tensor:
        shape, device = tokens.shape, tokens.device
        rate = self.mask_rate(t)
        r = torch.rand(shape, dtype=torch.float64, device=device)
        masked = (r < rate) & scored
        x_t = torch.where(masked, torch.full_like(tokens, self.mask_id), tokens)
        if not self.uniform:
            return x_t
        noise = torch.randint(0, self.vocab_size, shape, device=device)
        redrawn = (r >= rate + (1 - rate) * self.keep(t)) & scored & ~masked
        return torch.where(redrawn, noise, x_t)

    def log_x0(self, logits: Tensor) -> Tensor:
        return logits[..., : self.vocab_size].double().log_softmax(-1)

    def terms(self, logits: Tensor, x_t: Tensor, tokens: Tensor, t: Tensor) -> Tensor:
        """f per position `[B, L]` in float64 (see the class docstring)."""
        n = self.vocab_size
        log_x0 = self.log_x0(logits)
        u = self.keep(t).double()
        masked = x_t == self.mask_id
        # KL(p_u(x_0) ‖ p_u(x̂_0)); log p_u(x̂_0) = logaddexp(log u + log x̂_0, log((1 − u)/N))
        log_model = torch.logaddexp(
            u.log()[..., None] + log_x0, (torch.log1p(-u) - math.log(n))[..., None]
        )
        target = u[..., None] * F.one_hot(tokens, n).double() + ((1 - u) / n)[..., None]
        kl = (torch.xlogy(target, target) - target * log_model).sum(-1)
        terms = torch.where(masked, self.mask_weight(t).double() * kl, 0.0)
        if not self.uniform:
            return terms
        data = uniform_integrand(log_x0.exp(), x_t.clamp(max=n - 1), tokens, u)
        return torch.where(masked, terms, self.uniform_rate(t).double() / n * data)

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
        """A draw from q_1 (mask with probability 1 − a(1), else a uniform data token)."""
        t = torch.ones((), dtype=torch.float64)
        r = torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
        noise = torch.randint(0, self.vocab_size, shape, generator=generator, device=device)
        return torch.where(r < self.mask_rate(t).to(device), self.mask_id, noise)

    def posterior(self, x_t: Tensor, x0_probs: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The reverse step q(x_s | x_t, x̂_0) for s < t over the N data tokens and the mask
        `[..., N + 1]`. From the mask: x_s = y ∝ (a_s − a_t)·p_{u_s}(x̂_0)(y), the mask ∝ 1 − a_s
        (normalised by 1 − a_t). From a data token z (never from the mask): UDLM's posterior
        with α → u (`uniform_posterior`). `t`, `s` broadcast against `x_t` (per-position
        levels of a hyperschedule, or one time)."""
        a_t, a_s = 1 - self.mask_rate(t), 1 - self.mask_rate(s)
        u_t, u_s = self.keep(t), self.keep(s)
        n = self.vocab_size
        unmasked = (a_s - a_t)[..., None] * (u_s[..., None] * x0_probs + (1 - u_s)[..., None] / n)
        stay = (1 - a_s)[..., None].expand(*unmasked.shape[:-1], 1)
        from_mask = torch.cat([unmasked, stay], dim=-1)
        from_mask = from_mask / from_mask.sum(-1, keepdim=True)
        z = x_t.clamp(max=n - 1)
        from_data = F.pad(uniform_posterior(z, x0_probs, u_t, u_s), (0, 1))
        return torch.where((x_t == self.mask_id)[..., None], from_mask, from_data)


class GammaHybrid(Hybrid):
    """γ-hybrid: the rate matrix (1 − γ)·Q_absorb + γ·Q_uniform times the schedule's rate
    β = −α′/α, so a = α^(1 − γ), u = α^γ, λ_a = (1 − γ)β, λ_u = γβ and the mask weight
    λ_a · a/(1 − a) = (1 − γ)β α^(1−γ) / (1 − α^(1−γ)). γ = 0 is absorbing, γ = 1 uniform."""

    name = "gamma_hybrid"

    def __init__(self, vocab_size: int, schedule: Schedule, gamma: float) -> None:
        super().__init__(vocab_size, schedule)
        self.gamma = float(gamma)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-self.schedule.noise_rate(t).double())

    def mask_rate(self, t: Tensor) -> Tensor:
        return -torch.expm1((1 - self.gamma) * self._log_alpha(t))

    def keep(self, t: Tensor) -> Tensor:
        return torch.exp(self.gamma * self._log_alpha(t))

    def mask_weight(self, t: Tensor) -> Tensor:
        rate = self.mask_rate(t)
        if self.gamma == 1:  # never masked: 0, not 0 · ∞
            return torch.zeros_like(rate)
        return (1 - self.gamma) * self.schedule.decay(t).double() * (1 - rate) / rate

    def uniform_rate(self, t: Tensor) -> Tensor:
        return self.gamma * self.schedule.decay(t).double()

    @property
    def uniform(self) -> bool:
        return self.gamma > 0


class EpsilonHybrid(Hybrid):
    """ε-hybrid: a token is noised with probability 1 − α(t), as in masked diffusion, and a
    noised token becomes a uniform data token with probability ε instead of the mask:

        q_t(mask | x_0) = (1 − ε)(1 − α),   q_t(y | x_0) = α·[y = x_0] + ε(1 − α)/N

    so a = ε + (1 − ε)α, u = α/a, λ_a = (1 − ε)(−α′)/a, λ_u = ε(−α′)/(α a) = εβ/a, and the
    mask weight λ_a · a/(1 − a) = −α′/(1 − α) is MDLM's. ε = 0 is absorbing noise; at t = 1 a
    token is the mask with probability 1 − ε, else uniform."""

    name = "epsilon_hybrid"

    def __init__(self, vocab_size: int, schedule: Schedule, epsilon: float) -> None:
        super().__init__(vocab_size, schedule)
        self.epsilon = float(epsilon)

    def _clean(self, t: Tensor) -> Tensor:
        """a(t) = ε + (1 − ε)α(t)."""
        return self.epsilon + (1 - self.epsilon) * self.schedule.alpha(t).double()

    def mask_rate(self, t: Tensor) -> Tensor:
        return (1 - self.epsilon) * self.schedule.noise_rate(t).double()

    def keep(self, t: Tensor) -> Tensor:
        return self.schedule.alpha(t).double() / self._clean(t)

    def mask_weight(self, t: Tensor) -> Tensor:
        return self.schedule.weight(t).double()

    def uniform_rate(self, t: Tensor) -> Tensor:
        return self.epsilon * self.schedule.decay(t).double() / self._clean(t)

    @property
    def uniform(self) -> bool:
        return self.epsilon > 0


Process = Absorbing | Uniform | Hybrid
PROCESSES: dict[str, type[Process]] = {
    p.name: p for p in (Absorbing, Uniform, GammaHybrid, EpsilonHybrid)
}


class Diffusion(Objective):
    """Full-sequence discrete diffusion: one t per sequence, a bidirectional denoiser.

    `eval_samples` t draws per sequence estimate the ELBO in `nll` (low-discrepancy over the
    batch and the draws; deterministic given torch's RNG state).

    `hyperschedule: {kind: flat | staircase | sliding, width: w}` gives each position its
    own noise level τ_i(t) (`noise.Hyperschedule`); each position's ELBO integrand is
    weighted by τ_i′(t). Flat (the default) is plain full-sequence diffusion; a staircase of
    width 1 with the count estimator and `eval_samples` a multiple of the length scores
    exactly the chain rule (each row's draws hit every position's window once). The option
    is named `hyperschedule` because `schedule` already names α(t).

    `estimator="count"` (absorbing noise) draws the number of masked tokens per group instead
    of t (`noise.absorb_count`): the same bound, lower variance, and exact at block size 1.

    `num_classes > 0` conditions on `batch.condition`: the class is a clean prefix token
    (ids after the mask token: class c, then a null class), dropped to the null class with
    probability `label_dropout` in training so one model also denoises unconditionally, as
    classifier-free guidance needs. Batches without a condition are scored unconditionally.
    """

    bound = True
    layout = Layout.BIDIRECTIONAL
    paradigm = "diffusion"
    noise: str  # a key of PROCESSES, set by each subclass
    noise_options: dict[str, float] = {}  # the process's own parameters (γ, ε)

    def __init__(
        self,
        *,
        schedule: str = "loglinear",
        eval_samples: int = 4,
        estimator: str = "time",
        num_classes: int = 0,
        label_dropout: float = 0.1,
        hyperschedule: dict[str, Any] | None = None,
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
        self.hyperschedule: Hyperschedule = build_hyperschedule(hyperschedule)
        if estimator == "count" and self.hyperschedule.groups(1, torch.device("cpu")) is None:
            raise ConfigError(
                "the count estimator needs one noise level per group: a flat, staircase or "
                "width-1 sliding hyperschedule"
            )
        self.process: Process | None = None

    def bind(self, vocab_size: int) -> Diffusion:
        super().bind(vocab_size)
        self.process = PROCESSES[self.noise](vocab_size, self.schedule, **self.noise_options)
        return self

    @property
    def mask_id(self) -> int:
        """The mask token (the data vocabulary size) of absorbing or hybrid noise."""
        if PROCESSES[self.noise].extra_tokens == 0:
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

    def _bound(self) -> Process:
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

    def noised(self, process: Process, tokens: Tensor, t: Tensor, scored: Tensor) -> Tensor:
        """x_t drawn for a training step at per-position levels `t [B, L]` (a block-wise
        objective may shape the draw; evaluation always draws from `process.corrupt`)."""
        return process.corrupt(tokens, t, scored)

    def elbo_terms(
        self,
        model: Model,
        batch: Batch,
        t: Tensor,
        condition: Tensor | None = None,
        training: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """ELBO integrand `[B, L]` at per-position times `t [B, L]` given class labels
        `condition` (None: unconditional), and the scored mask. Under a hyperschedule `t` is
        the global time: each position is noised at τ_i(t) and its term weighted by τ_i′(t).
        `training` draws x_t with `noised` (the training loss's own draw)."""
        process = self._bound()
        tokens = batch.tokens
        scored = scored_mask(batch)
        tau, rate = self.hyperschedule.levels(t)
        weight = None
        if self.estimator == "count":
            groups = self.hyperschedule.groups(tokens.shape[1], tokens.device)
            if self.hyperschedule.flat:
                groups = self.groups(tokens.shape[1], tokens.device)
            x_t, weight = absorb_count(tokens, tau, scored, groups, process.mask_id)
        else:
            x_t = (
                self.noised(process, tokens, tau, scored)
                if training
                else process.corrupt(tokens, tau, scored)
            )
        prefix = self.class_prefix(condition, tokens.shape[0], tokens.device)
        logits = self.denoise(model, x_t, tokens, prefix)
        if rate is not None:  # clean (τ = 0) and pure-noise (τ = 1) positions weigh 0
            tau = tau.clamp(1e-12, 1 - 1e-12)
        if weight is None:
            terms = process.terms(logits, x_t, tokens, tau)
        else:  # the count estimator (absorbing noise only)
            terms = process.terms(logits, x_t, tokens, tau, weight)
        if rate is not None:
            terms = torch.where(rate > 0, terms * rate.to(terms.dtype), 0.0)
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
        terms, scored = self.elbo_terms(model, batch, t, condition, training=True)
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
        scored = scored_mask(batch)
        t = torch.ones(tokens.shape, dtype=torch.float64, device=tokens.device)
        x_t = process.corrupt(tokens, t, scored)
        prefix = self.class_prefix(batch.condition, tokens.shape[0], tokens.device)
        guess = process.log_x0(self.denoise(model, x_t, tokens, prefix)).argmax(-1)
        return torch.where(scored, guess, tokens), scored

    @property
    def generates(self) -> bool:
        return self.decodes_from_masks

    @property
    def ranks_next(self) -> bool:
        return self.decodes_from_masks

    @torch.no_grad()
    def next_log_probs(self, model: Model, context: Tensor) -> Tensor:
        """log x̂_0 `[B, V]` at one mask token appended to `context [B, L]` (BERT4Rec's
        reading of the next item); needs a process with a mask state, else a ConfigError."""
        if not self.decodes_from_masks:
            raise ConfigError(
                f"{self.noise} noise has no mask token to append: next_log_probs needs "
                f"absorbing or hybrid noise that masks"
            )
        masks = torch.full_like(context[:, :1], self.mask_id)
        x = torch.cat([context, masks], dim=1)
        prefix = self.class_prefix(None, context.shape[0], context.device)
        return self._bound().log_x0(self.denoise(model, x, x, prefix))[:, -1]

    @property
    def decodes_from_masks(self) -> bool:
        """Whether the process reaches the all-mask state (absorbing noise, or a hybrid that
        masks at t = 1), from which `generate` decodes."""
        process = self._bound()
        if isinstance(process, Absorbing):
            return True
        if isinstance(process, Hybrid):
            return bool(process.mask_rate(torch.ones((), dtype=torch.float64)) > 0)
        return False

    @torch.no_grad()
    def generate(self, model: Model, batch: Batch) -> tuple[Tensor, Tensor]:
        """Greedy confidence decoding: every scored position starts masked and each model
        call commits the argmax at the most confident masked position (the `confidence`
        sampler's rule, threshold 1), within the first group holding masks (the whole row
        here; block diffusion: blocks left to right). As many calls as scored tokens.
        Uniform noise has no mask to start from: a ConfigError (use the ancestral sampler)."""
        from seqlab.sampling.diffusion import confidence_rule, x0_probs  # imports objectives

        if not self.decodes_from_masks:
            raise ConfigError(
                f"{self.noise} noise has no mask state to decode from: generate needs absorbing "
                f"or hybrid noise that masks (sample uniform diffusion with the ancestral sampler)"
            )
        tokens = batch.tokens
        scored = scored_mask(batch)
        x = tokens.masked_fill(scored, self.mask_id)
        rule = confidence_rule(self.mask_id, 1.0, 0.0, None)
        groups = self.groups(tokens.shape[1], tokens.device).expand_as(tokens)
        prefix = self.class_prefix(batch.condition, tokens.shape[0], tokens.device)
        for _ in range(int(scored.sum(1).max())):
            masked = x == self.mask_id
            current = groups.masked_fill(~masked, tokens.shape[1]).min(1, keepdim=True).values
            logits = self.denoise(model, x, x, prefix)
            x = rule(x, x0_probs(logits, self.vocab_size, 1.0), masked & (groups == current), 0, 1)
        return x, scored


@OBJECTIVES.register("masked_diffusion")
class MaskedDiffusion(Diffusion):
    """Absorbing-state diffusion (MDLM: SUBS parameterisation, continuous-time ELBO bound)."""

    noise = "absorbing"


@OBJECTIVES.register("uniform_diffusion")
class UniformDiffusion(Diffusion):
    """Uniform-state diffusion (UDLM: closed-form posterior, continuous-time ELBO bound)."""

    noise = "uniform"


@OBJECTIVES.register("gamma_hybrid_diffusion")
class GammaHybridDiffusion(Diffusion):
    """γ-hybrid diffusion: rates (1 − γ)·absorbing + γ·uniform (Fathi et al., 2025; ELBO bound).

    `gamma` 0 is masked diffusion, 1 uniform diffusion; between, a masked token is decoded
    into a token that may still be corrected. See `Hybrid` and `GammaHybrid`."""

    noise = "gamma_hybrid"

    def __init__(
        self,
        *,
        gamma: float = 0.5,
        schedule: str = "loglinear",
        eval_samples: int = 4,
        num_classes: int = 0,
        label_dropout: float = 0.1,
        hyperschedule: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= gamma <= 1:
            raise ConfigError(f"gamma must lie in [0, 1], got {gamma}")
        self.noise_options = {"gamma": float(gamma)}
        super().__init__(
            schedule=schedule,
            eval_samples=eval_samples,
            num_classes=num_classes,
            label_dropout=label_dropout,
            hyperschedule=hyperschedule,
        )


@OBJECTIVES.register("epsilon_hybrid_diffusion")
class EpsilonHybridDiffusion(Diffusion):
    """ε-hybrid diffusion: a noised token is uniform with probability ε, else the mask
    (Fathi et al., 2025; ELBO bound). `epsilon` 0 is masked diffusion. See `EpsilonHybrid`."""

    noise = "epsilon_hybrid"

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        schedule: str = "loglinear",
        eval_samples: int = 4,
        num_classes: int = 0,
        label_dropout: float = 0.1,
        hyperschedule: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= epsilon < 1:
            raise ConfigError(f"epsilon must lie in [0, 1), got {epsilon}")
        self.noise_options = {"epsilon": float(epsilon)}
        super().__init__(
            schedule=schedule,
            eval_samples=eval_samples,
            num_classes=num_classes,
            label_dropout=label_dropout,
            hyperschedule=hyperschedule,
        )
