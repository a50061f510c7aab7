"""A mixture of log-normals for positive values (Shchur et al., 2020, LogNormMix)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, LogNormal, MixtureSameFamily

from seqlab.errors import ConfigError
from seqlab.heads.base import ValueHead
from seqlab.registry import VALUE_HEADS

LOG_SIGMA_RANGE = (-5.0, 3.0)


class LogNormalMixtureDistribution(MixtureSameFamily):
    """`MixtureSameFamily` of log-normals whose mean is computed in float64 from the head's
    parameters, in log space: log E[τ] = logsumexp_k(log w_k + m_k + s_k²/2), then exp.

    Why float64 rather than a tighter clamp on log σ: the density (and every NLL measured with
    it) stays as it is, while the mean, the one quantity that overflows, gets float64's range:
    with log σ at its upper clamp 3 and a data scale of 1.4, s²/2 ≈ 395 overflows float32
    (exp > 3.4e38 past 88) but not float64 (past 709, i.e. data scales up to about 1.8), and
    s² amplifies float32's rounding of s (1e-7 relative becomes 1e-4 in the mean). A mean
    beyond even float64 is +inf; `seqlab.sampling.marked.rollout_events` then feeds back
    `ValueHead.largest_input`."""

    def __init__(
        self, parameters: Tensor, components: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    ) -> None:
        self._exact = lambda: components(parameters.double())
        logits, loc, scale = components(parameters)
        super().__init__(
            Categorical(logits=logits), LogNormal(loc, scale, validate_args=False), False
        )

    @property
    def mean(self) -> Tensor:
        logits, loc, scale = self._exact()
        terms = logits.log_softmax(-1) + loc + scale.square() / 2
        return torch.logsumexp(terms, dim=-1).exp()


@VALUE_HEADS.register("lognormal_mixture")
class LogNormalMixture(ValueHead):
    """Positive values (inter-event times) as a mixture of K log-normals: the intensity-free
    temporal point process of Shchur et al. (2020).

    p(τ | h) = Σ_k w_k · LogNormal(τ; shift + scale·μ_k, scale·σ_k), with
    (logits w, μ, log σ) = W h + b, `[B, T, 3K]`, log σ clamped to [−5, 3]; equivalently
    (log τ − shift)/scale is a K-component Gaussian mixture. Closed-form log-density, exact
    samples and mean E[τ] = Σ_k w_k exp(m_k + s_k²/2), in float64
    (`LogNormalMixtureDistribution`).
    """

    support = "positive"

    def __init__(
        self, d_model: int, *, components: int = 8, shift: float = 0.0, scale: float = 1.0
    ) -> None:
        if components < 1:
            raise ConfigError(f"lognormal_mixture components must be >= 1, got {components}")
        self.components = components
        self.outputs = 3 * components
        super().__init__(d_model, shift=shift, scale=scale)

    def make(self, parameters: Tensor) -> Distribution:
        return LogNormalMixtureDistribution(parameters, self.components_of)

    def components_of(self, parameters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The mixture logits, the log-normals' locations m_k and scales s_k `[..., K]`."""
        logits, mu, log_sigma = parameters.chunk(3, dim=-1)
        sigma = log_sigma.clamp(*LOG_SIGMA_RANGE).exp()
        return logits, self.shift + self.scale * mu, self.scale * sigma
