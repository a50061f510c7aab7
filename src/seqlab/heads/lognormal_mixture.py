"""A mixture of log-normals for positive values (Shchur et al., 2020, LogNormMix)."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Categorical, Distribution, LogNormal, MixtureSameFamily

from seqlab.errors import ConfigError
from seqlab.heads.base import ValueHead
from seqlab.registry import VALUE_HEADS

LOG_SIGMA_RANGE = (-5.0, 3.0)


@VALUE_HEADS.register("lognormal_mixture")
class LogNormalMixture(ValueHead):
    """Positive values (inter-event times) as a mixture of K log-normals: the intensity-free
    temporal point process of Shchur et al. (2020).

    p(τ | h) = Σ_k w_k · LogNormal(τ; shift + scale·μ_k, scale·σ_k), with
    (logits w, μ, log σ) = W h + b, `[B, T, 3K]`, log σ clamped to [−5, 3]; equivalently
    (log τ − shift)/scale is a K-component Gaussian mixture. Closed-form log-density, exact
    samples and mean E[τ] = Σ_k w_k exp(m_k + s_k²/2).
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
        logits, mu, log_sigma = parameters.chunk(3, dim=-1)
        sigma = log_sigma.clamp(*LOG_SIGMA_RANGE).exp()
        return MixtureSameFamily(
            Categorical(logits=logits),
            LogNormal(self.shift + self.scale * mu, self.scale * sigma, validate_args=False),
            validate_args=False,
        )
