"""Context layouts: which positions each position may read, as typed values.

A leaf module: mixers declare the layouts they support, objectives choose one, the model
checks it, and decoders pass it, all without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from seqlab.errors import ConfigError


class LayoutKind(str, Enum):
    """The ways positions may read each other (see `Layout`)."""

    CAUSAL = "causal"
    BIDIRECTIONAL = "bidirectional"
    BLOCK_CAUSAL = "block_causal"
    BLOCK_DIFFUSION = "block_diffusion"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Layout:
    """Which positions each position may read.

    causal: s <= t. bidirectional: all. block_causal(b): blocks of b tokens see themselves
    fully and every earlier block. block_diffusion(b): the input is the vectorised sequence
    [x_t ; x_0] of length 2L (BD3-LM); noised blocks see themselves and earlier clean blocks,
    clean blocks are block-causal (see `ops.attention.block_diffusion_mask`).
    """

    kind: LayoutKind
    block_size: int | None = None

    CAUSAL: ClassVar[Layout]
    BIDIRECTIONAL: ClassVar[Layout]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", LayoutKind(self.kind))
        except ValueError:
            valid = ", ".join(k.value for k in LayoutKind)
            raise ConfigError(f"unknown layout {self.kind!r}; valid layouts: {valid}") from None
        blocks = self.kind in (LayoutKind.BLOCK_CAUSAL, LayoutKind.BLOCK_DIFFUSION)
        size = self.block_size
        valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 1
        if blocks and not valid_size:
            raise ConfigError(f"the {self.kind} layout needs a block_size >= 1, got {size!r}")
        if not blocks and size is not None:
            raise ConfigError(f"the {self.kind} layout takes no block_size, got {size!r}")

    @staticmethod
    def block_causal(block_size: int) -> Layout:
        return Layout(LayoutKind.BLOCK_CAUSAL, block_size)

    @staticmethod
    def block_diffusion(block_size: int) -> Layout:
        return Layout(LayoutKind.BLOCK_DIFFUSION, block_size)

    @property
    def is_causal(self) -> bool:
        return self.kind is LayoutKind.CAUSAL


Layout.CAUSAL = Layout(LayoutKind.CAUSAL)
Layout.BIDIRECTIONAL = Layout(LayoutKind.BIDIRECTIONAL)

ALL_LAYOUTS = frozenset(LayoutKind)
CAUSAL_ONLY = frozenset({LayoutKind.CAUSAL})
