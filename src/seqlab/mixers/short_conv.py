"""Short causal depthwise convolution (kernel 4 by default) with its own decode state.

y_t = Σ_{i=0}^{k-1} w_i ⊙ x_{t-k+1+i} (+ bias), channels independent. The decode state is
the last k−1 inputs `[B, k−1, C]`, so a step costs O(k·C) whatever the context length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConv(nn.Module):
    def __init__(
        self,
        channels: int,
        kernel_size: int = 4,
        *,
        bias: bool = True,
        activation: str | None = "silu",
    ) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.kernel_size**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x `[B, T, C]` -> (y `[B, T, C]`, last k−1 inputs `[B, k−1, C]` or None)."""
        k = self.kernel_size
        if state is None:
            padded = F.pad(x, (0, 0, k - 1, 0))
        else:
            padded = torch.cat([state.to(x.dtype), x], dim=1)
        y = F.conv1d(
            padded.transpose(1, 2), self.weight[:, None, :], self.bias, groups=self.channels
        ).transpose(1, 2)
        if self.activation == "silu":
            y = F.silu(y)
        new_state = None if state is None else padded[:, padded.shape[1] - (k - 1) :]
        return y, new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return torch.zeros(
            batch_size,
            self.kernel_size - 1,
            self.channels,
            device=device,
            dtype=dtype or torch.float32,
        )

    def state_size(self) -> int:
        return (self.kernel_size - 1) * self.channels
