"""The Mixer interface, context layouts, and helpers for state values.

A mixer maps `x [B, T, d_model]` to `y [B, T, d_model]`. `state=None` runs the parallel
(training) form; a given state continues from it (`T == 1` is one decode step, `T > 1` a
prefill) and the new state is returned. State is a value, never stored on the module, so
beams, speculative drafts and diffusion blocks can copy and branch it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

State = Any


@dataclass(frozen=True)
class Layout:
    """Which positions each position may read.

    causal: s <= t. bidirectional: all. block_causal(b): blocks of b tokens see themselves
    fully and every earlier block. block_diffusion(b): the input is the vectorised sequence
    [x_t ; x_0] of length 2L (BD3-LM); noised blocks see themselves and earlier clean blocks,
    clean blocks are block-causal (see `ops.attention.block_diffusion_mask`).
    """

    kind: str
    block_size: int | None = None

    CAUSAL: ClassVar[Layout]
    BIDIRECTIONAL: ClassVar[Layout]

    @staticmethod
    def block_causal(block_size: int) -> Layout:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        return Layout("block_causal", block_size)

    @staticmethod
    def block_diffusion(block_size: int) -> Layout:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        return Layout("block_diffusion", block_size)

    @property
    def is_causal(self) -> bool:
        return self.kind == "causal"


Layout.CAUSAL = Layout("causal")
Layout.BIDIRECTIONAL = Layout("bidirectional")



class Mixer(nn.Module, ABC):
    """A token mixer. Subclasses declare `layouts` they support in the registry metadata."""

    @abstractmethod
    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """`x [B, T, d_model]` -> (`y [B, T, d_model]`, new state or None)."""

    @abstractmethod
    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """The state before any token."""

    @abstractmethod
    def state_size(self, seq_len: int) -> int:
        """Numbers carried per sequence to decode after `seq_len` tokens."""

    def mixing_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token beyond the mixer's linear layers (0 when it has none)."""
        return 0.0

    def init_weights(self, std: float, out_std: float) -> None:
        """Normal(0, std) for linear weights, `out_std` for the output projection `out`.

        Mixers with structured parameters (decays, SSM matrices) extend this.
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=out_std if name == "out" else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply `fn` to every tensor inside a state (dataclasses, tuples, lists, dicts, None)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: map_state(fn, getattr(state, f.name)) for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    if isinstance(state, tuple | list):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    return state


def reorder_state(state: State, index: Tensor) -> State:
    """Select batch rows of a state by `index` (beam reordering, batch pruning)."""
    return map_state(lambda t: t.index_select(0, index.to(t.device)) if t.dim() else t, state)


def clone_state(state: State) -> State:
    return map_state(lambda t: t.clone(), state)


def check_input(x: Tensor, d_model: int, name: str = "x") -> None:
    from seqlab.errors import ShapeError

    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ShapeError(f"{name} must have shape [B, T, {d_model}], got {list(x.shape)}")
