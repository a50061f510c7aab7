"""A Student-t for real values with heavy tails."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, StudentT

from seqlab.heads.base import ValueHead
from seqlab.registry import VALUE_HEADS

MIN_SCALE = 1e-4  # in standardised units
MIN_DF = 2.0  # the variance stays finite


@VALUE_HEADS.register("student_t")
class StudentTHead(ValueHead):
    """Real values as a Student-t (as DeepAR-style forecasters use for heavy tails):
    p(v | h) = t_ν(v; shift + scale·μ, scale·σ), with (ν', μ, s) = W h + b `[B, T, 3]`,
    ν = 2 + softplus(ν') (a finite variance) and σ = softplus(s) + 1e-4."""

    support = "real"
    outputs = 3

    def make(self, parameters: Tensor) -> Distribution:
        df, mu, s = parameters.unbind(-1)
        return StudentT(
            MIN_DF + F.softplus(df),
            self.shift + self.scale * mu,
            self.scale * (F.softplus(s) + MIN_SCALE),
            validate_args=False,
        )
