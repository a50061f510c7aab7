"""Discrete hidden Markov model fitted by Baum-Welch (EM)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqlab.baselines.base import Baseline, check_finite, training_targets
from seqlab.errors import ConfigError, DataError
from seqlab.registry import BASELINES

if TYPE_CHECKING:
    from seqlab.objectives.base import Batch

ROWS_PER_CHUNK = 4096
EMISSION_NOISE = 0.5  # λ: the share of Dirichlet noise in the starting emissions
TRANSITION_CONCENTRATION = 0.5  # of the starting transitions' Dirichlet draw


@BASELINES.register("hmm")
class HMM(Baseline):
    """Discrete hidden Markov model with `states` hidden states, fitted by Baum-Welch (EM).

    z_0 ~ π, z_t | z_{t-1} ~ A[z_{t-1}, :], x_t | z_t ~ B[z_t, :]; buffers `initial` π [S],
    `transition` A [S, S], `emission` B [S, V] (probabilities, float64). The next-token
    distribution after x_{≤t} is p(x_{t+1} | x_{≤t}) = Σ_j (f_t A)_j B[j, x_{t+1}] with the
    filter f_t(i) = p(z_t = i | x_{≤t}) ∝ (f_{t-1} A)_i B[i, x_t]; the decode state is the
    predictive f_t A [B, S] (π before any token), so token-by-token decoding equals the full
    forward.

    `fit` starts from the training unigram frequencies u mixed with Dirichlet noise per
    state, B[i] = (1 - λ) u + λ d_i with d_i ~ Dir(1) and λ = `EMISSION_NOISE`, transitions
    and π ~ Dir(`TRANSITION_CONCENTRATION`) (drawn from torch's seeded generator, so a fit is
    a function of the seed), then runs up to `iterations` EM steps over the training rows
    (each row's tokens up to its last scored position; position 0 is emitted too, never
    predicted), stopping once the per-token log-likelihood gains less than `tolerance`. The
    E-step is the scaled forward-backward (Rabiner, 1989: each α_t normalised by
    c_t = p(x_t | x_{<t}), log-likelihood Σ log c_t), as stable as a log-space one; the M-step
    adds `smoothing` to every expected count (a Dirichlet(1 + smoothing) MAP estimate, which
    keeps every token possible; with 0 it is plain EM and the training log-likelihood never
    decreases). `log_likelihoods` keeps the training log-likelihood per token before each
    M-step; `fit_curve` the same as losses (its negation), one per EM iteration.
    Forward arithmetic: 2 (S² + S V) per token.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        states: int = 8,
        iterations: int = 100,
        tolerance: float = 1e-4,
        smoothing: float = 0.01,
    ) -> None:
        super().__init__(vocab_size)
        if states < 1:
            raise ConfigError(f"hmm states must be >= 1, got {states}")
        if iterations < 1:
            raise ConfigError(f"hmm iterations must be >= 1, got {iterations}")
        check_finite("hmm tolerance", tolerance)
        check_finite("hmm smoothing", smoothing)
        if tolerance < 0:
            raise ConfigError(f"hmm tolerance must be >= 0, got {tolerance}")
        if smoothing < 0:
            raise ConfigError(f"hmm smoothing must be >= 0, got {smoothing}")
        self.states, self.iterations, self.smoothing = states, iterations, smoothing
        self.tolerance = tolerance
        uniform = lambda *shape: torch.full(shape, 1.0 / shape[-1], dtype=torch.float64)  # noqa: E731
        self.register_buffer("initial", uniform(states))
        self.register_buffer("transition", uniform(states, states))
        self.register_buffer("emission", uniform(states, vocab_size))
        self.log_likelihoods: list[float] = []

    @property
    def fit_curve(self) -> list[float]:
        return [-value for value in self.log_likelihoods]

    def _start(self, rows: Tensor, observed: Tensor) -> None:
        """The EM starting point (see the class docstring)."""
        unigram = torch.zeros(self.vocab_size, dtype=torch.float64, device=rows.device)
        unigram.index_add_(0, rows[observed], torch.ones_like(rows[observed], dtype=torch.float64))
        unigram = normalised(unigram)

        def draw(*shape: int, c: float) -> Tensor:
            concentration = torch.full(shape, c, dtype=torch.float64)
            return torch.distributions.Dirichlet(concentration).sample().to(rows.device)

        noise = draw(self.states, self.vocab_size, c=1.0)
        self.emission = (1 - EMISSION_NOISE) * unigram + EMISSION_NOISE * noise
        self.transition = draw(self.states, self.states, c=TRANSITION_CONCENTRATION)
        self.initial = draw(self.states, c=TRANSITION_CONCENTRATION)

    def fit(self, batches: Iterable[Batch]) -> None:
        rows, observed = training_rows(batches, self.device)
        if rows.shape[0] == 0:
            raise DataError("hmm: the training batches hold no scored token")
        tokens = int(observed.sum())
        self._start(rows, observed)
        self.log_likelihoods = []
        for _ in range(self.iterations):
            initial = torch.zeros_like(self.initial)
            transition = torch.zeros_like(self.transition)
            emission = torch.zeros_like(self.emission)
            log_likelihood = 0.0
            for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
                chunk = slice(start, start + ROWS_PER_CHUNK)
                log_likelihood += self._expected_counts(
                    rows[chunk], observed[chunk], initial, transition, emission
                )
            self.log_likelihoods.append(log_likelihood / tokens)
            self.initial = normalised(initial + self.smoothing)
            self.transition = normalised(transition + self.smoothing)
            self.emission = normalised(emission + self.smoothing)
            history = self.log_likelihoods
            if len(history) > 1 and history[-1] - history[-2] < self.tolerance:
                break
        self.fit_flops = self.fit_flops_for(tokens, len(self.log_likelihoods))

    def _expected_counts(
        self, rows: Tensor, observed: Tensor, initial: Tensor, transition: Tensor, emission: Tensor
    ) -> float:
        """One E-step on `rows` `[n, L]` (`observed` `[n, L]`, a prefix of each row): adds the
        expected counts into `initial`, `transition` and `emission`; returns the summed
        log-likelihood."""
        n, length = rows.shape
        # p(x_t | z_t = i) [n, L, S]; 1 past a row's end, which marginalises the rest out
        emit = self.emission.T[rows].masked_fill(~observed[..., None], 1.0)
        alpha = torch.empty(n, length, self.states, dtype=torch.float64, device=rows.device)
        scale = torch.empty(n, length, dtype=torch.float64, device=rows.device)
        predicted = self.initial.expand(n, -1)
        for t in range(length):
            joint = predicted * emit[:, t]
            scale[:, t] = joint.sum(-1).clamp(min=torch.finfo(torch.float64).tiny)
            alpha[:, t] = joint / scale[:, t, None]
            predicted = alpha[:, t] @ self.transition
        beta = torch.ones_like(alpha)
        for t in range(length - 2, -1, -1):
            after = emit[:, t + 1] * beta[:, t + 1] / scale[:, t + 1, None]
            beta[:, t] = after @ self.transition.T
            pairs = alpha[:, t].T @ (after * observed[:, t + 1, None])
            transition += self.transition * pairs
        gamma = alpha * beta
        initial += gamma[:, 0].sum(0)
        emission.T.index_add_(0, rows[observed], gamma[observed])
        return float(scale.log().masked_fill(~observed, 0.0).sum())

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return self.initial.to(device or self.device).expand(batch_size, -1).clone()

    def next_log_probs(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        predicted = state.to(torch.float64)
        out = []
        for t in range(tokens.shape[1]):
            filtered = normalised(predicted * self.emission.T[tokens[:, t]])
            predicted = filtered @ self.transition
            out.append(predicted @ self.emission)
        return torch.stack(out, 1).log(), predicted

    def fit_flops_for(self, tokens: int, iterations: int | None = None) -> float:
        """Per EM iteration 6 S² + 2 S per token; `iterations` defaults to the most allowed."""
        passes = self.iterations if iterations is None else iterations
        return float(passes * tokens * (6 * self.states**2 + 2 * self.states))

    def state_size(self, seq_len: int) -> int:
        return self.states

    def flops_per_token(self, seq_len: int) -> float:
        return 2.0 * (self.states**2 + self.states * self.vocab_size)


def normalised(weights: Tensor) -> Tensor:
    """`weights` divided by their sum over the last dimension (zero rows stay zero)."""
    return weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)


def training_rows(batches: Iterable[Batch], device: torch.device) -> tuple[Tensor, Tensor]:
    """Every training row with a scored token, padded to one length: tokens `[N, L]` and the
    bool mask `[N, L]` of its positions up to and including its last scored one."""
    rows, observed = [], []
    for batch in batches:
        tokens, scored = training_targets(batch)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last = torch.where(scored, positions, -1).amax(1)
        keep = last >= 0
        rows.append(tokens[keep])
        observed.append(positions[None, :] <= last[keep, None])
    if not rows:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool)
    length = max(r.shape[1] for r in rows)
    pad = lambda t: torch.nn.functional.pad(t, (0, length - t.shape[1]))  # noqa: E731
    return torch.cat([pad(r) for r in rows]).to(device), torch.cat([pad(o) for o in observed]).to(
        device
    )
