"""The base of classical baselines: models fitted in closed form or by EM, not by gradients.

A baseline has the interface of `seqlab.model.Model` that tasks, objectives and samplers use:
`forward(tokens [B, T], state=None, *, layout=CAUSAL, positions=None) -> (logits [B, T, V],
state)` where the logits are log-probabilities of the next token (so a softmax of them is the
distribution itself), `init_state(B)`, `config`, `layouts` (causal only), `num_params`,
`state_size(T)` and `flops_per_token(T)`. `fit(batches)` estimates it from the training
batches (`Batch`, targets `tokens[:, 1:]` where `mask[:, 1:]`, as the AR objective scores).

Every number a baseline keeps is a buffer, so `seqlab.io.save`/`load` and the checksums work
unchanged. Buffers whose shape depends on the data (sparse count tables) are named in
`data_shaped`; `resize_to(weights)` gives them the saved shapes before a load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.layout import Layout, LayoutKind
from seqlab.registry import BASELINES, OBJECTIVES

if TYPE_CHECKING:
    from seqlab.objectives.base import Batch

OBJECTIVE = "ar"


class Baseline(nn.Module):
    """A classical next-token model with the Model interface, fitted by `fit`."""

    name: ClassVar[str]
    layouts: ClassVar[frozenset[LayoutKind]] = frozenset({LayoutKind.CAUSAL})
    data_shaped: ClassVar[tuple[str, ...]] = ()

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ConfigError(f"a baseline needs a vocabulary of >= 2 tokens, got {vocab_size}")
        self.vocab_size = vocab_size
        self.config = ModelConfig(vocab_size=vocab_size, baseline=type(self).name)
        self.tied = False
        self.fit_flops = 0.0
        self.register_buffer("_anchor", torch.zeros(0, dtype=torch.float64), persistent=False)

    def fit(self, batches: Iterable[Batch]) -> None:
        """Estimate every buffer from the training batches."""
        raise NotImplementedError

    def fit_flops_for(self, tokens: int, iterations: int = 1) -> float:
        """The arithmetic of fitting on `tokens` scored tokens (an iterative fit: `iterations`
        passes); `fit` sets `fit_flops` with it and `seqlab compare --dry-run` plans with it."""
        return float(tokens * iterations)

    @property
    def fit_curve(self) -> list[float]:
        """The training loss (negative log-likelihood per token) after each iteration of an
        iterative fit, in order; empty for a closed-form one."""
        return []

    def next_log_probs(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Log-probabilities `[B, T, V]` (float64) of the token after each position of
        `tokens` `[B, T]`, reading `state` (from `init_state`), and the state after them."""
        raise NotImplementedError

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        raise NotImplementedError

    def forward(
        self,
        tokens: Tensor,
        state: Any = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
        input_embeddings: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        """Log-probabilities `[B, T, V]` (float32) and the new state (None when `state` is
        None). `positions` is ignored: a baseline reads token order only."""
        self._check(tokens, layout, input_embeddings)
        start = self.init_state(tokens.shape[0], device=tokens.device)
        log_probs, new_state = self.next_log_probs(tokens, start if state is None else state)
        return log_probs.float(), (None if state is None else new_state)

    def _check(self, tokens: Tensor, layout: Layout, input_embeddings: Tensor | None) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise ShapeError(f"tokens must be an integer tensor [B, T], got {tokens!r:.80}")
        if tokens.shape[1] == 0:
            raise ShapeError(f"tokens must have T >= 1 positions, got shape {list(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ShapeError(
                f"token ids must lie in [0, {self.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        if layout.kind not in self.layouts:
            raise SeqlabError(
                f"baseline {self.name!r} reads the causal layout only, got {layout.kind.value!r}"
            )
        if input_embeddings is not None:
            raise SeqlabError(f"baseline {self.name!r} takes no input_embeddings")

    def resize_to(self, weights: dict[str, Tensor]) -> None:
        """Give the data-shaped buffers the shapes (and dtypes) of saved `weights`."""
        for name in self.data_shaped:
            if name in weights:
                saved = weights[name]
                setattr(
                    self, name, torch.zeros(saved.shape, dtype=saved.dtype, device=saved.device)
                )

    def num_params(self, *, embeddings: bool = True) -> int:
        """Numbers the fitted model keeps (its persistent buffers)."""
        return sum(t.numel() for t in self.state_dict().values())

    def num_active_params(self, *, embeddings: bool = True) -> int:
        return self.num_params()

    def state_size(self, seq_len: int) -> int:
        """Numbers kept per sequence to decode (independent of `seq_len`)."""
        return 0

    def flops_per_token(self, seq_len: int) -> float:
        """Arithmetic of one forward per token (see each baseline)."""
        return 0.0

    @property
    def device(self) -> torch.device:
        return self._anchor.device


def build_baseline(config: ModelConfig) -> Baseline:
    """The baseline `config.baseline` names, with `config.baseline_options`, over
    `config.vocab_size` tokens; its `config` is `config` itself."""
    entry = BASELINES.get(config.baseline)
    baseline = entry.build(supplied={"vocab_size": config.vocab_size}, **config.baseline_options)
    baseline.config = config
    return baseline


def check_finite(what: str, value: float) -> None:
    """Raise a one-line ConfigError when the option `what` is nan or infinite."""
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value}")


def check_objective(objective: str) -> None:
    """Baselines are next-token models: only the `ar` objective (or a subclass) trains them."""
    target = OBJECTIVES.get(objective).target
    if not issubclass(target, OBJECTIVES.get(OBJECTIVE).target):
        raise ConfigError(
            f"a baseline (model.baseline) is a next-token model: objective must be ar, got "
            f"{objective!r}"
        )


def training_targets(batch: Batch) -> tuple[Tensor, Tensor]:
    """`tokens` `[B, L]` and the bool mask `[B, L]` of positions the AR objective scores
    (position 0 never: it has no prefix)."""
    tokens = batch.tokens.long()
    scored = torch.ones_like(tokens, dtype=torch.bool)
    if batch.mask is not None:
        scored &= batch.mask.bool()
    scored[:, 0] = False
    return tokens, scored


def context_keys(history: Tensor, base: int) -> Tensor:
    """One int64 key per row of `history` `[..., k]` (ids in [0, base)): Σ_i h_i · base^i."""
    weights = base ** torch.arange(history.shape[-1], device=history.device, dtype=torch.long)
    return (history.long() * weights).sum(-1)


def count_table(keys: Tensor, words: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """A sparse table of summed `weights` per (context key, word): sorted unique `keys` [C],
    `offsets` [C + 1] into `words` [E] and `counts` [E] (float64), rows sorted by key."""
    pairs, inverse = torch.unique(torch.stack([keys, words]), dim=1, return_inverse=True)
    counts = torch.zeros(pairs.shape[1], dtype=torch.float64, device=keys.device)
    counts.index_add_(0, inverse, weights.to(torch.float64))
    unique_keys, lengths = torch.unique_consecutive(pairs[0], return_counts=True)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long, device=keys.device)
    offsets[1:] = lengths.cumsum(0)
    return {"keys": unique_keys, "offsets": offsets, "words": pairs[1], "counts": counts}


def dense_rows(
    query: Tensor, keys: Tensor, offsets: Tensor, words: Tensor, counts: Tensor, vocab: int
) -> tuple[Tensor, Tensor]:
    """The count rows `[P, V]` (float64) of the contexts `query` `[P]` in a sparse table, and
    whether each was found `[P]` (a row of zeros where not)."""
    dense = torch.zeros(len(query), vocab, dtype=torch.float64, device=query.device)
    if len(keys) == 0:
        return dense, torch.zeros(len(query), dtype=torch.bool, device=query.device)
    at = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
    found = keys[at] == query
    lengths = torch.where(found, offsets[at + 1] - offsets[at], 0)
    rows = torch.repeat_interleave(torch.arange(len(query), device=query.device), lengths)
    first = torch.repeat_interleave(offsets[at] - (lengths.cumsum(0) - lengths), lengths)
    entries = first + torch.arange(len(rows), device=query.device)
    dense[rows, words[entries]] = counts[entries]
    return dense, found


def register_table(module: nn.Module, prefix: str, table: dict[str, Tensor] | None) -> None:
    """Register (or replace) the four buffers `{prefix}_keys/offsets/words/counts`."""
    empty = {
        "keys": torch.zeros(0, dtype=torch.long),
        "offsets": torch.zeros(1, dtype=torch.long),
        "words": torch.zeros(0, dtype=torch.long),
        "counts": torch.zeros(0, dtype=torch.float64),
    }
    for part, tensor in (table or empty).items():
        name = f"{prefix}_{part}"
        if name in module._buffers:
            setattr(module, name, tensor.to(module._anchor.device))
        else:
            module.register_buffer(name, tensor)


def table(module: nn.Module, prefix: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(getattr(module, f"{prefix}_{p}") for p in ("keys", "offsets", "words", "counts"))


def table_names(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{p}" for p in ("keys", "offsets", "words", "counts"))


__all__ = ["BASELINES", "Baseline", "build_baseline", "check_objective"]
