"""Block diffusion (BD3-LM, BlockGen): autoregressive over blocks, diffusion within each.

    −log p(x) = Σ_b −log p(x^b | x^{<b}) ≤ Σ_b ELBO(x^b | x^{<b})

One t per block. The denoiser reads the vectorised sequence [x_t ; x_0] of length 2L under
`Layout.block_diffusion(b)`: a noised block sees itself bidirectionally and the clean blocks
before it; clean blocks are block-causal. Both halves carry the same positions 0..L−1, so
the model learns the task it samples (a noised block on top of a cached clean prefix).
Block size 1 is the AR chain rule (plus p(x_0) from an empty context); block size ≥ L is
full-sequence diffusion with the same draws.

Recurrent backbones (every mixer whose registry entry lists the `block_diffusion` layout)
serve the same layout through `mixers.base.scan_in_layout`: the fixed-size state carries the
clean prefix, and each noised block is scanned forwards from the state at its start plus
backwards within the block. Block-wise sampling then caches the state instead of keys and
values; cached and uncached logits are equal, as for attention.

`shift=True` keeps the next-token reading of an autoregressive model (Fast-dLLM v2, SDAR),
so a block-diffusion model can start from AR weights (`train.init_from`): x̂_0 at position i
comes from the output at i − 1, the clean half's output for the first position of a block
(an AR prediction from the clean prefix), the noised block's own for the others. Position 0
has no predecessor and reads its own output. With block size 1 and AR weights this is the
AR model exactly, for every position after the first.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import Batch
from seqlab.objectives.diffusion import Diffusion
from seqlab.objectives.noise import stratified_times
from seqlab.registry import OBJECTIVES


@OBJECTIVES.register("block_diffusion")
class BlockDiffusion(Diffusion):
    """Block diffusion (BD3-LM): autoregressive over blocks, diffusion within (ELBO bound).

    `block_size` is the evaluation (and sampling) block; `block_sizes` trains on a mixture,
    one size drawn per step (BlockGen); `clip = [low, high]` draws training times from
    [low, high] only (BD3-LM's clipped schedule, a variance reduction: the evaluation bound
    always integrates over [0, 1]); `shift` reads x̂_0 at i from the output at i − 1 (see the
    module docstring)."""

    def __init__(
        self,
        *,
        block_size: int = 16,
        block_sizes: list[int] | None = None,
        clip: list[float] | None = None,
        noise: str = "absorbing",
        schedule: str = "loglinear",
        eval_samples: int = 4,
        estimator: str = "time",
        shift: bool = False,
    ) -> None:
        self.noise = noise
        super().__init__(schedule=schedule, eval_samples=eval_samples, estimator=estimator)
        sizes = [block_size] if block_sizes is None else list(block_sizes)
        if not sizes or min(sizes + [block_size]) < 1:
            raise ConfigError(f"block sizes must be positive, got {block_size}, {block_sizes}")
        if clip is not None and (len(clip) != 2 or not 0 <= clip[0] < clip[1] <= 1):
            raise ConfigError(f"clip must be [low, high] with 0 <= low < high <= 1, got {clip}")
        clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.block_size, self.block_sizes, self.clip = block_size, sizes, clip
        self.shift = bool(shift)

    def groups(self, length: int, device: torch.device) -> Tensor:
        return torch.arange(length, device=device) // self.block_size

    def denoise(
        self, model: Model, x_t: Tensor, tokens: Tensor, prefix: Tensor | None = None
    ) -> Tensor:
        """x̂_0 logits `[B, L, V]` of every noised block from [x_t ; x_0] (no class prefix:
        block diffusion takes no class condition here)."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device).repeat(2)
        layout = Layout.block_diffusion(self.block_size)
        logits, _ = model(torch.cat([x_t, tokens], dim=1), layout=layout, positions=positions)
        noised, clean = logits[:, :length], logits[:, length:]
        if not self.shift:
            return noised
        # position j feeds j + 1: from the clean half where j + 1 starts a block
        block_end = (torch.arange(length, device=tokens.device) + 1) % self.block_size == 0
        feeds_next = torch.where(block_end[:, None], clean, noised)
        return torch.cat([noised[:, :1], feeds_next[:, :-1]], dim=1)

    def train_times(self, n: int, device: torch.device) -> Tensor:
        low, high = (0.0, 1.0) if self.clip is None else self.clip
        return stratified_times(n, low=low, high=high, device=device)

    def with_block_size(self, block_size: int) -> BlockDiffusion:
        """A shallow copy scoring with another block size (sharing the bound process)."""
        other = copy.copy(self)
        other.block_size = block_size
        return other

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if len(self.block_sizes) == 1 and self.block_sizes[0] == self.block_size:
            return super().loss(model, batch)
        size = self.block_sizes[int(torch.randint(len(self.block_sizes), ()))]
        loss, metrics = Diffusion.loss(self.with_block_size(size), model, batch)
        return loss, {**metrics, "block_size": float(size)}
