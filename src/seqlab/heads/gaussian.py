"""A Gaussian for real values."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Normal

from seqlab.heads.base import ValueHead
from seqlab.registry import VALUE_HEADS

MIN_STD = 1e-4  # in standardised units


@VALUE_HEADS.register("gaussian")
class Gaussian(ValueHead):
    """Real values as a Gaussian: p(v | h) = N(v; shift + scale·μ, (scale·σ)²), with
    (μ, s) = W h + b `[B, T, 2]` and σ = softplus(s) + 1e-4."""

    support = "real"
    outputs = 2

    def make(self, parameters: Tensor) -> Distribution:
        mu, s = parameters.unbind(-1)
        std = F.softplus(s) + MIN_STD
        return Normal(self.shift + self.scale * mu, self.scale * std, validate_args=False)
