"""Block diffusion (BD3-LM, BlockGen): autoregressive over blocks, diffusion within each.

    −log p(x) = Σ_b −log p(x^b | x^{<b}) ≤ Σ_b ELBO(x^b | x^{<b})

One t per block. The denoiser reads the vectorised sequence [x_t ; x_0] of length 2L under
`Layout.block_diffusion(b)`: a noised block sees itself bidirectionally and the clean blocks
before it; clean blocks are block-causal. Both halves carry the same positions 0..L−1, so
the model learns the task it samples (a noised block on top of a cached clean prefix).
Block size 1 is the AR chain rule (plus p(x_0) from an empty context); block size ≥ L is
full-sequence diffusion with the same draws (for training, with `clip: null`: the default
trains block diffusion on BD3-LM's clipped windows, see `BlockDiffusion`).

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
import math

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.model import Model
from seqlab.objectives.base import Batch
from seqlab.objectives.diffusion import Absorbing, Diffusion, Process
from seqlab.objectives.noise import stratified_times
from seqlab.registry import OBJECTIVES

RESAMPLE_ROUNDS = 100

# BD3-LM (Arriola et al., 2025), the clipped windows U[β, ω] of lowest NELBO variance on LM1B:
PAPER_WINDOWS = {4: (0.45, 0.95), 16: (0.3, 0.8)}


def paper_clip(block_size: int) -> tuple[float, float]:
    """BD3-LM's variance-minimising training window for `block_size`.

    Block size 1 is always fully masked ([1, 1]: t = 1, weight 1), which is the exact AR
    loss, as in the paper. Sizes 4 and 16 take the paper's windows; between them the window
    is interpolated linearly in log2(block size) (8 -> [0.375, 0.875]); below 4 and above 16
    the nearest measured window holds. The interpolation and the held ends are this
    library's assumption, not measurements of the paper."""
    if block_size == 1:
        return (1.0, 1.0)
    if block_size in PAPER_WINDOWS:
        return PAPER_WINDOWS[block_size]
    (small, (a_low, a_high)), (large, (b_low, b_high)) = sorted(PAPER_WINDOWS.items())
    share = (math.log2(block_size) - math.log2(small)) / (math.log2(large) - math.log2(small))
    share = min(max(share, 0.0), 1.0)
    return (a_low + share * (b_low - a_low), a_high + share * (b_high - a_high))


@OBJECTIVES.register("block_diffusion")
class BlockDiffusion(Diffusion):
    """Block diffusion (BD3-LM): autoregressive over blocks, diffusion within (ELBO bound).

    `block_size` is the evaluation (and sampling) block; `block_sizes` trains on a mixture,
    one size drawn per step (BlockGen); `shift` reads x̂_0 at i from the output at i − 1 (see
    the module docstring).

    `clip` is BD3-LM's clipped schedule, its variance reduction for the training loss: each
    block's time is drawn from U[low, high] instead of U[0, 1], and with `resample` each
    block's mask is redrawn until the fraction of its scored tokens that is masked lies in
    [low, high] as well (the paper's `training.resample`). Training then fits the bound on
    the mask rates that carry the most signal and skips the nearly clean and nearly fully
    masked blocks whose 1/t-weighted terms make the gradient noisy; the evaluation bound
    always integrates over [0, 1], so reported NLLs stay true bounds. `clip` is
    - `"auto"` (the default): the window BD3-LM found to minimise the variance of the
      per-block NELBO (`paper_clip`), per block size, so each size of a mixture gets its own;
    - `[low, high]` with 0 ≤ low < high ≤ 1: that window for every size;
    - `None`: no clipping, times from U[0, 1] (the unbiased ELBO as the training loss).
    """

    def __init__(
        self,
        *,
        block_size: int = 16,
        block_sizes: list[int] | None = None,
        clip: list[float] | str | None = "auto",
        resample: bool = True,
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
        if clip is not None and clip != "auto":
            window = list(clip) if isinstance(clip, list | tuple) else None
            if (
                window is None
                or len(window) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in window)
                or not 0 <= window[0] < window[1] <= 1
            ):
                raise ConfigError(
                    f"clip must be 'auto', null or [low, high] with 0 <= low < high <= 1, "
                    f"got {clip!r}"
                )
            clip = (float(window[0]), float(window[1]))
        if not isinstance(resample, bool):
            raise ConfigError(f"resample must be true or false, got {resample!r}")
        self.block_size, self.block_sizes, self.clip = block_size, sizes, clip
        self.resample = resample
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

    def window(self) -> tuple[float, float] | None:
        """The training window [low, high] of times (and masked fractions) at this block size,
        or None for the whole of [0, 1]. `auto` clips absorbing noise only: BD3-LM measured
        its windows for masking, and the uniform and hybrid posteriors need t < 1."""
        if self.clip == "auto":
            return paper_clip(self.block_size) if self.noise == "absorbing" else None
        return self.clip

    def train_times(self, n: int, device: torch.device) -> Tensor:
        low, high = self.window() or (0.0, 1.0)
        return stratified_times(n, low=low, high=high, device=device)

    def noised(self, process: Process, tokens: Tensor, t: Tensor, scored: Tensor) -> Tensor:
        """x_t for training: `Diffusion.noised`, then (absorbing noise, `resample`, a window)
        every block whose masked fraction of scored tokens leaves the window redrawn at its
        own t, up to `RESAMPLE_ROUNDS` times. A block whose number of scored tokens n admits
        no count in the window (⌈low·n⌉ > ⌊high·n⌋, e.g. one token against [0.45, 0.95])
        keeps its first draw."""
        x_t = super().noised(process, tokens, t, scored)
        window = self.window()
        if window is None or not self.resample or not isinstance(process, Absorbing):
            return x_t
        low, high = window
        groups = self.groups(tokens.shape[1], tokens.device)
        counts = torch.zeros(tokens.shape[0], int(groups.max()) + 1, dtype=torch.float64)
        counts = counts.to(tokens.device)
        n = counts.index_add(1, groups, scored.double())
        admissible = (n > 0) & (torch.ceil(low * n - 1e-9) <= torch.floor(high * n + 1e-9))
        for _ in range(RESAMPLE_ROUNDS):
            masked = counts.index_add(1, groups, (x_t == process.mask_id).double())
            fraction = masked / n.clamp(min=1)
            outside = admissible & ((fraction < low - 1e-9) | (fraction > high + 1e-9))
            if not outside.any():
                break
            redraw = outside[:, groups]
            x_t = torch.where(redraw, process.corrupt(tokens, t, scored), x_t)
        return x_t

    def with_block_size(self, block_size: int) -> BlockDiffusion:
        """A shallow copy scoring with another block size (sharing the bound process)."""
        other = copy.copy(self)
        other.block_size = block_size
        return other

    def loss(self, model: Model, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """The training loss at this step's block size; a clipped window's loss is no
        bound, so its metric is `clipped_loss` instead of `nll_bound`."""
        mixture = self.block_sizes != [self.block_size]
        size = self.block_size
        if mixture:
            size = self.block_sizes[int(torch.randint(len(self.block_sizes), ()))]
        objective = self if size == self.block_size else self.with_block_size(size)
        loss, metrics = Diffusion.loss(objective, model, batch)
        if objective.window() is not None:
            metrics["clipped_loss"] = metrics.pop("nll_bound")
        if mixture:
            metrics["block_size"] = float(size)
        return loss, metrics
