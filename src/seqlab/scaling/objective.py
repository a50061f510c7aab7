"""The fitting core of L(x) and L(N, D): a sum of power laws fitted to log losses.

With K covariates x_1..x_K (K = 1: L(C), K = 2: L(N, D)) and z_k = log x_k:

    L̂ = E + Σ_k A_k · x_k^(−α_k)
    log L̂ = LSE(e, a_1 − α_1 z_1, ..., a_K − α_K z_K),   E = exp(e),  A_k = exp(a_k)
    r_i = log L̂_i − log L_i
    minimise  (1/n) Σ_i ρ(r_i)

with ρ(r) = Huber_δ(r) / δ (= r²/(2δ) for |r| ≤ δ, |r| − δ/2 beyond; Hoffmann et al. 2022,
δ = 1e-3) or ρ(r) = r²/2 (least squares on log L). The parameter vector is
θ = (e, a_1..a_K, α_1..α_K); E > 0 and A_k > 0 by construction (E → 0 as e → −∞) and
α_k ≥ 0 is a bound of L-BFGS-B (scipy.optimize.minimize). The objective is evaluated at
every start of a grid at once (`best_starts`); L-BFGS-B runs from the best of them and the
lowest optimum wins (`fit`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import minimize

from seqlab.errors import ConfigError, DataError

Criterion = Literal["huber", "squares"]
DELTA = 1e-3
MAX_ITER = 1000


class RefitFailed(DataError):
    """A fit found no finite optimum (or had too few distinct points); its message is the
    reason a bootstrap records, and a caller that catches SeqlabError reports it."""


def power_term(x: np.ndarray | float, coefficient: float, exponent: float) -> np.ndarray:
    """A·x^(−α) formed in log space, exp(log A − α·log x) (no overflow of x^(−α))."""
    with np.errstate(divide="ignore"):
        return np.exp(np.log(coefficient) - exponent * np.log(np.asarray(x, dtype=float)))


def log_predict(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log L̂ for parameters θ (..., 2K+1) at log-covariates z (n, K): shape (..., n)."""
    return _log_sum_exp(_terms(theta, z))[0]


def objective(
    theta: np.ndarray, z: np.ndarray, log_y: np.ndarray, criterion: Criterion, delta: float = DELTA
) -> np.ndarray:
    """The mean of ρ(r_i) for parameters θ (..., 2K+1): shape (...)."""
    return np.mean(_rho(log_predict(theta, z) - log_y, criterion, delta), axis=-1)


def best_starts(
    z: np.ndarray,
    log_y: np.ndarray,
    starts: np.ndarray,
    criterion: Criterion,
    delta: float = DELTA,
    count: int | None = None,
) -> np.ndarray:
    """The `count` rows of `starts` (m, 2K+1) of lowest objective, best first (all when
    None)."""
    with np.errstate(all="ignore"):
        screened = objective(starts, z, log_y, criterion, delta)
    order = np.argsort(np.where(np.isfinite(screened), screened, np.inf), kind="stable")
    return starts[order if count is None else order[:count]]


def fit(
    z: np.ndarray,
    log_y: np.ndarray,
    starts: np.ndarray,
    criterion: Criterion = "huber",
    delta: float = DELTA,
) -> tuple[np.ndarray, float]:
    """The best θ that L-BFGS-B reaches from each row of `starts` (m, 2K+1) and its
    objective; raises RefitFailed when no start reaches a finite optimum."""
    if criterion not in ("huber", "squares"):
        raise ConfigError(f"expected criterion 'huber' or 'squares', got {criterion!r}")
    k = z.shape[1]
    bounds = [(None, None)] * (k + 1) + [(0.0, None)] * k
    zz = np.concatenate([np.zeros((len(z), 1)), z], axis=1)
    best_theta, best_value = None, np.inf
    for start in starts:
        with np.errstate(all="ignore"):
            result = minimize(
                _value_and_grad,
                start,
                args=(zz, log_y, criterion, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": MAX_ITER, "ftol": 1e-12, "gtol": 1e-8},
            )
        if np.isfinite(result.fun) and np.all(np.isfinite(result.x)) and result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise RefitFailed("no start reached a finite optimum")
    return best_theta, best_value


def fit_log(
    z: np.ndarray,
    log_y: np.ndarray,
    starts: np.ndarray,
    criterion: Criterion = "huber",
    delta: float = DELTA,
) -> tuple[np.ndarray, float, float]:
    """`fit`, and the RMS log residual sqrt(mean r_i²) at its optimum: (θ, objective, RMS)."""
    theta, value = fit(z, log_y, starts, criterion, delta)
    residual = log_predict(theta, z) - log_y
    return theta, value, float(np.sqrt(np.mean(residual**2)))


def _terms(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The LSE's arguments (..., n, K+1): e, then a_k − α_k z_k."""
    k = z.shape[1]
    e, a, alpha = theta[..., None, :1], theta[..., None, 1 : k + 1], theta[..., None, k + 1 :]
    power = a - alpha * z
    return np.concatenate([np.broadcast_to(e, power.shape[:-1] + (1,)), power], axis=-1)


def _rho(r: np.ndarray, criterion: Criterion, delta: float) -> np.ndarray:
    if criterion == "squares":
        return 0.5 * r**2
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r**2 / delta, abs_r - 0.5 * delta)


def _rho_prime(r: np.ndarray, criterion: Criterion, delta: float) -> np.ndarray:
    return r if criterion == "squares" else np.clip(r, -delta, delta) / delta


def _log_sum_exp(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Σ_j exp(terms[..., j]) and the softmax weights over j."""
    top = terms.max(axis=-1, keepdims=True)
    exp = np.exp(terms - top)
    total = exp.sum(axis=-1, keepdims=True)
    return (np.log(total) + top)[..., 0], exp / total


def _value_and_grad(
    theta: np.ndarray, zz: np.ndarray, log_y: np.ndarray, criterion: Criterion, delta: float
) -> tuple[float, np.ndarray]:
    """The objective and its gradient in θ; zz (n, K+1) is z with a column of zeros first."""
    k = zz.shape[1] - 1
    slopes = np.concatenate([[0.0], theta[k + 1 :]])
    log_l, weights = _log_sum_exp(theta[: k + 1] - slopes * zz)  # weights: ∂ log L̂ / ∂ term
    r = log_l - log_y
    g = _rho_prime(r, criterion, delta) / len(r)
    gw = g[:, None] * weights  # elementwise sums: no BLAS call (its threads cost more here)
    grad = np.concatenate([gw.sum(0), -(gw[:, 1:] * zz[:, 1:]).sum(0)])
    return float(np.mean(_rho(r, criterion, delta))), grad
