"""The parametric loss L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, approach 3) and the
compute-optimal allocation it implies.

N: parameters, D: training tokens, L: final validation loss of each run. The fit minimises

    (1/n) Σ_i Huber_δ( LSE(a − α log N_i, b − β log D_i, e) − log L_i ) / δ,   δ = 1e-3

(the mean, scaled by 1/δ, of Hoffmann's sum: the same minimiser) with L-BFGS-B over a grid
of starts (α, β ∈ {0, 0.5, ..., 2}, e ∈ {−1, −0.5, ..., 1}, a, b ∈ {0, 5, ..., 25}): the
objective is evaluated at all 4500, and L-BFGS-B runs from the `n_starts` of lowest objective
(every one when None); A = exp(a), B = exp(b), E = exp(e), α, β ≥ 0. Bootstrap refits start
from the full-data optimum and the best grid start.

Under C = 6·N·D, minimising L(N, D) at fixed C gives

    N_opt(C) = G·(C/6)^a,   D_opt(C) = G^(−1)·(C/6)^b,
    a = β/(α+β),  b = α/(α+β),  G = (α·A / (β·B))^(1/(α+β))

so N* ∝ C^a and D* ∝ C^b; C here is always 6·N·D (whatever a ladder's `scale.flops`). The
allocation needs α > 0 and β > 0 (otherwise the loss keeps falling as all compute goes to N
or to D): a fit without it has `allocation` None and the reason in `allocation_note`, and a
bootstrap refit without it adds no sample to the allocation's intervals. Every number comes
with a bootstrap interval over the runs (`seqlab.scaling.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqlab.errors import DataError, ShapeError
from seqlab.scaling import objective
from seqlab.scaling.bootstrap import N_BOOT, Bootstrap, group_indices, run_bootstrap
from seqlab.scaling.estimate import LEVEL, Estimate, estimate
from seqlab.scaling.objective import RefitFailed, power_term

NAMES = ("E", "A", "B", "alpha", "beta")
N_STARTS = 16
BOOT_STARTS = 2  # the full-data optimum and the best start of the grid
FLOPS_PER_PARAM_TOKEN = 6.0


def _hoffmann_grid() -> np.ndarray:
    """Starts θ = (e, a, b, α, β) of Hoffmann et al.'s grid."""
    e = np.arange(-1.0, 1.01, 0.5)
    ab = np.arange(0.0, 25.1, 5.0)
    exponents = np.arange(0.0, 2.01, 0.5)
    return np.array(np.meshgrid(e, ab, ab, exponents, exponents, indexing="ij")).reshape(5, -1).T


GRID = _hoffmann_grid()


@dataclass(frozen=True)
class Allocation:
    """N_opt(C) = G·(C/6)^a, D_opt(C) = G^(−1)·(C/6)^b (see the module docstring)."""

    a: Estimate
    b: Estimate
    G: Estimate

    def params(self, c: np.ndarray | float) -> np.ndarray:
        return _allocate(c, self.a.value, self.b.value, self.G.value)[0]

    def tokens(self, c: np.ndarray | float) -> np.ndarray:
        return _allocate(c, self.a.value, self.b.value, self.G.value)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": "N_opt = G * (C/6)^a, D_opt = (C/6)^b / G",
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "G": self.G.to_dict(),
        }


@dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A/N^α + B/D^β fitted to runs (N, D, L): the parameters with their
    bootstrap intervals, the compute-optimal allocation, the objective at the optimum, the
    RMS log residual, the data, the options to refit with, and the bootstrap."""

    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    allocation: Allocation | None
    objective: float
    rms_log_residual: float
    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    criterion: objective.Criterion
    delta: float
    n_starts: int | None
    bootstrap: Bootstrap | None
    allocation_note: str | None = None

    @property
    def params(self) -> np.ndarray:
        """(E, A, B, α, β): the order of `bootstrap.samples`' columns."""
        return np.array([getattr(self, name).value for name in NAMES])

    def predict(
        self, n: np.ndarray | float, d: np.ndarray | float, params: np.ndarray | None = None
    ) -> np.ndarray:
        """L(N, D) at the fitted parameters, or at `params` (E, A, B, α, β)."""
        e, a, b, alpha, beta = self.params if params is None else params
        return e + power_term(n, a, alpha) + power_term(d, b, beta)

    def loss_at_compute(
        self, c: np.ndarray | float, params: np.ndarray | None = None
    ) -> np.ndarray:
        """The compute-optimal loss L(N_opt(C), D_opt(C)) (what `crossover` compares; NaN
        where α or β is 0)."""
        params = self.params if params is None else np.asarray(params, dtype=float)
        return self.predict(*compute_optimal(c, params), params)

    def scale(self) -> np.ndarray:
        """What `held_out_check` orders the runs by: their compute 6·N·D."""
        return FLOPS_PER_PARAM_TOKEN * self.N * self.D

    def point_scale(self) -> np.ndarray:
        return self.scale()

    def observed(self) -> np.ndarray:
        return self.L

    def held_points(self, held: np.ndarray) -> np.ndarray:
        return held

    def predict_points(self, mask: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        return self.predict(self.N[mask], self.D[mask], params)

    def refit(self, keep: np.ndarray) -> ChinchillaFit:
        """The same fit, without bootstrap, on the runs `keep` (a boolean mask)."""
        return fit_chinchilla(
            self.N[keep],
            self.D[keep],
            self.L[keep],
            criterion=self.criterion,
            delta=self.delta,
            n_starts=self.n_starts,
            n_boot=0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": "L = E + A / N^alpha + B / D^beta",
            **{name: getattr(self, name).to_dict() for name in NAMES},
            "allocation": None if self.allocation is None else self.allocation.to_dict(),
            "allocation_note": self.allocation_note,
            "objective": self.objective,
            "rms_log_residual": self.rms_log_residual,
            "criterion": self.criterion,
            "delta": self.delta,
            "N": self.N.tolist(),
            "D": self.D.tolist(),
            "L": self.L.tolist(),
            "bootstrap": None if self.bootstrap is None else self.bootstrap.to_dict(),
        }


def allocation_exponents(a: Any, b: Any, alpha: Any, beta: Any) -> tuple[Any, Any, Any]:
    """(a, b, G) of the compute-optimal allocation for L's A = `a`, B = `b`, α, β (scalars or
    arrays); NaN where α or β is not positive (no allocation: see the module docstring)."""
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    ok = (alpha > 0) & (beta > 0)
    safe_alpha, safe_beta = np.where(ok, alpha, 1.0), np.where(ok, beta, 1.0)
    total = safe_alpha + safe_beta
    g = (safe_alpha * np.asarray(a) / (safe_beta * np.asarray(b))) ** (1 / total)
    return tuple(np.where(ok, v, np.nan)[()] for v in (safe_beta / total, safe_alpha / total, g))


def compute_optimal(c: np.ndarray | float, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt(C), D_opt(C)) at compute `c` (C = 6·N·D) for Chinchilla parameters
    (E, A, B, α, β)."""
    _, a, b, alpha, beta = params
    return _allocate(c, *allocation_exponents(a, b, alpha, beta))


def _allocate(c: Any, exp_a: Any, exp_b: Any, g: Any) -> tuple[np.ndarray, np.ndarray]:
    """N_opt = G·(C/6)^a, D_opt = (C/6)^b / G."""
    scaled = np.asarray(c, dtype=float) / FLOPS_PER_PARAM_TOKEN
    return g * scaled**exp_a, scaled**exp_b / g


def allocation_problem(alpha: float, beta: float) -> str | None:
    """Why (α, β) give no compute-optimal allocation, or None when they do."""
    if alpha > 0 and beta > 0:
        return None
    zero = "α" if alpha <= 0 else "β"
    return f"{zero} = 0: the loss falls fastest with all compute in one of N, D"


def fit_chinchilla(
    params: Sequence[float] | np.ndarray,
    tokens: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    groups: Sequence[Hashable] | None = None,
    criterion: objective.Criterion = "huber",
    delta: float = objective.DELTA,
    n_starts: int | None = N_STARTS,
    n_boot: int = N_BOOT,
    seed: int | None = 0,
    level: float = LEVEL,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^α + B/D^β to runs of `params` N, `tokens` D and final `loss` L;
    intervals from `n_boot` refits on resamples of the runs (runs sharing a `groups` label,
    e.g. the seeds of one configuration, drawn together)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    if n.ndim != 1 or not n.shape == d.shape == y.shape:
        raise ShapeError(
            f"expected params, tokens and loss of one equal length, got {n.shape}, {d.shape}, "
            f"{y.shape}"
        )
    if not all(np.all(np.isfinite(v) & (v > 0)) for v in (n, d, y)):
        raise DataError("expected positive finite params, tokens and loss")
    if len(n) < 6 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise DataError(
            f"expected at least 6 runs over 2 or more distinct params and tokens to fit "
            f"5 parameters, got {len(n)} runs"
        )
    z = np.stack([np.log(n), np.log(d)], axis=1)
    starts = objective.best_starts(z, np.log(y), GRID, criterion, delta, n_starts)
    theta, value, rms = _fit(n, d, y, criterion, delta, starts)
    boot_starts = np.vstack([_internal(theta), starts[: BOOT_STARTS - 1]])

    def refit(indices: np.ndarray) -> np.ndarray:
        return _fit(n[indices], d[indices], y[indices], criterion, delta, boot_starts)[0]

    boot = None
    if n_boot > 0:
        boot = run_bootstrap(refit, group_indices(groups, len(n)), NAMES, n_boot, seed, level)

    def est(values: float, samples: np.ndarray | None) -> Estimate:
        return estimate(values, samples, level)

    columns = [None if boot is None else boot.samples[:, i] for i in range(len(NAMES))]
    note = allocation_problem(theta[3], theta[4])
    allocation = None
    if note is None:
        derived = allocation_exponents(*theta[1:])
        derived_samples = (
            [None] * 3 if boot is None else list(allocation_exponents(*boot.samples[:, 1:].T))
        )
        allocation = Allocation(*(est(v, s) for v, s in zip(derived, derived_samples, strict=True)))
    fields = (est(v, s) for v, s in zip(theta, columns, strict=True))
    return ChinchillaFit(
        *fields, allocation, value, rms, n, d, y, criterion, delta, n_starts, boot, note
    )


def _fit(
    n: np.ndarray,
    d: np.ndarray,
    y: np.ndarray,
    criterion: objective.Criterion,
    delta: float,
    starts: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """(E, A, B, α, β) fitted from `starts` θ, the objective and the RMS log residual."""
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise RefitFailed("fewer than 2 distinct params or tokens")
    z, log_y = np.stack([np.log(n), np.log(d)], axis=1), np.log(y)
    theta, value, rms = objective.fit_log(z, log_y, starts, criterion, delta)
    e, a, b, alpha, beta = theta
    return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta]), value, rms


def _internal(params: np.ndarray) -> np.ndarray:
    """θ = (e, a, b, α, β) of (E, A, B, α, β)."""
    e, a, b, alpha, beta = params
    return np.array([np.log(max(e, 1e-300)), np.log(a), np.log(b), alpha, beta])
