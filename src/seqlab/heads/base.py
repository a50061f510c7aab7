"""The ValueHead interface: a continuous value per position, encoded and predicted.

A model with a value head (`model.value_head: NAME`) reads a value `v_t` beside each token
`x_t` and predicts the next one: the input of position t is `embed(x_t) + encode(v_t)` and,
from the final hidden state `h_t` `[B, T, d_model]`, `distribution(h_t)` is p(v_{t+1} | x_≤t,
v_≤t), a `torch.distributions.Distribution` of batch shape `[B, T]`, beside the token logits
p(x_{t+1} | ...). Marks and inter-event times of a point process (Shchur et al., 2020:
intensity-free learning) and the values of a time series use it.

Values are standardised before they enter the network: `u = (g(v) − shift) / scale`, with
`g = log` for positive values (`support = "positive"`) and the identity for real ones; a
task supplies `shift` and `scale` from its training split (`Task.value_head_options`), so a
head learns on unit scale whatever the data's units. They are persistent float64 buffers, so
a saved model or checkpoint carries the standardisation its weights were trained with.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, ShapeError
from seqlab.registry import VALUE_HEADS

SUPPORTS = ("positive", "real")
SMALLEST_POSITIVE = 1e-10  # log of a zero gap (the first event of a sequence) stays finite
STANDARD_RANGE = 20.0  # a standardised input feature beyond this is clipped


class ValueHead(nn.Module):
    """A continuous value per position: `encode` reads it, `distribution` predicts the next."""

    name: ClassVar[str]
    support: ClassVar[str] = "real"
    outputs: ClassVar[int]  # numbers per position that parameterise the distribution

    def __init__(self, d_model: int, *, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(shift) and math.isfinite(scale) and scale > 0):
            raise ConfigError(
                f"value head {self.name!r}: shift must be finite and scale finite and > 0, got "
                f"shift {shift}, scale {scale}"
            )
        self.register_buffer("shift", torch.tensor(float(shift), dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.encoder = nn.Linear(1, d_model)
        self.projection = nn.Linear(d_model, self.outputs)

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.encoder.weight, std=std)
        nn.init.zeros_(self.encoder.bias)
        nn.init.normal_(self.projection.weight, std=std)
        nn.init.zeros_(self.projection.bias)

    def standardise(self, values: Tensor) -> Tensor:
        """`u = (g(v) − shift) / scale` `[B, T]`, g = log for positive support."""
        if self.support == "positive":
            values = values.clamp_min(SMALLEST_POSITIVE).log()
        return ((values - self.shift) / self.scale).clamp(-STANDARD_RANGE, STANDARD_RANGE)

    def encode(self, values: Tensor) -> Tensor:
        """The input feature of each value: `[B, T]` -> `[B, T, d_model]`."""
        return self.encoder(self.standardise(values).unsqueeze(-1))

    def largest_input(self) -> float:
        """The largest value the encoder tells apart, `g⁻¹(shift + STANDARD_RANGE · scale)`
        (a larger one reads the same, clipped), at most the largest float32 (values travel in
        float32 batches)."""
        top = self.shift.double() + STANDARD_RANGE * self.scale.double()
        top = top.exp() if self.support == "positive" else top
        return min(float(top), torch.finfo(torch.float32).max)

    def distribution(self, hidden: Tensor) -> Distribution:
        """p(v_{t+1} | history) with batch shape `[B, T]`, from `hidden` `[B, T, d_model]`."""
        return self.from_parameters(self.projection(hidden))

    def from_parameters(self, parameters: Tensor) -> Distribution:
        """The distribution from the projection's `[B, T, outputs]` (`Model.forward`'s third
        output), in the data's units, computed in `distribution_dtype` (float32 at least:
        score it at values of that dtype, never at the parameters' bf16 or fp16)."""
        return self.make(parameters.to(distribution_dtype(parameters.dtype)))

    def make(self, parameters: Tensor) -> Distribution:
        """The distribution of each head (float32 or float64 `parameters`)."""
        raise NotImplementedError

    def flops_per_token(self) -> float:
        return 2.0 * (self.encoder.weight.numel() + self.projection.weight.numel())


def distribution_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a head's distribution is computed in from parameters of `dtype`: float64
    stays, anything narrower (bf16 or fp16 under autocast) becomes float32."""
    return torch.promote_types(dtype, torch.float32)


def build_value_head(config: ModelConfig) -> ValueHead | None:
    """The value head `config.value_head` names (None: the model has none), with
    `config.value_head_options`, over `config.d_model`."""
    if config.value_head is None:
        return None
    entry = VALUE_HEADS.get(config.value_head)
    return entry.build(supplied={"d_model": config.d_model}, **config.value_head_options)


def check_values(values: Tensor, tokens: Tensor, support: str) -> None:
    """A ShapeError unless `values` is a floating tensor of the tokens' shape `[B, T]` with
    finite values in the head's support."""
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise ShapeError(f"values must be a floating tensor [B, T], got {values!r:.80}")
    if values.shape != tokens.shape:
        raise ShapeError(
            f"values must have the tokens' shape {list(tokens.shape)}, got {list(values.shape)}"
        )
    if not bool(torch.isfinite(values).all()):
        raise ShapeError("values must be finite")
    if support == "positive" and bool((values < 0).any()):
        raise ShapeError("values of a positive value head must be >= 0")
