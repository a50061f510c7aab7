"""Implicit attention maps of a model's layers (Zimerman et al., "A Unified Implicit Attention
Formulation for Gated-Linear Recurrent Sequence Models", 2024): the T×T matrix that each head
of a layer's mixer applies to its values, for one input (see `Mixer.mixing`): causal, or the
full matrix of a bidirectional-only mixer (hydra)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seqlab.errors import SeqlabError
from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixing
from seqlab.model import Model
from seqlab.registry import MIXERS


class _Captured(Exception):
    """Raised by the capturing hook to stop the model once the mixer's input is known."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.x = x


def mixing_mixers() -> list[str]:
    """The registered mixers that have a mixing matrix (declare `linear_in_values`)."""
    return [name for name in MIXERS.names() if MIXERS.get(name).declared("linear_in_values")]


def mixing_matrix(model: Model, tokens: Tensor | Sequence[Sequence[int]], layer: int) -> Mixing:
    """The mixing of layer `layer` (0-based) for `tokens [B, T]`: the model runs in the causal
    layout (the bidirectional one for a model without it, e.g. of hydra layers) up to that
    layer's mixer, whose input a forward pre-hook captures, and the mixer's `mixing` gives
    matrix `[B, H, T, T]`, values and output (no gradients are kept).

    A SeqlabError for a layer index outside the model or a mixer without a matrix.
    """
    blocks = model.blocks
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise SeqlabError(
            f"layer must be an integer in 0 … {len(blocks) - 1} (the model has {len(blocks)} "
            f"layers), got {layer!r}"
        )
    mixer = blocks[layer].mixer
    if not mixer.linear_in_values:
        raise SeqlabError(
            f"layer {layer}'s mixer {blocks[layer].mixer_name!r} has no mixing matrix (its "
            f"output is not linear in its values); mixers with one: {', '.join(mixing_mixers())}"
        )
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
    tokens = tokens.to(next(model.parameters()).device)

    def capture(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        raise _Captured(args[0])

    causal = LayoutKind.CAUSAL in model.layouts
    handle = mixer.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            model(tokens, layout=Layout.CAUSAL if causal else Layout.BIDIRECTIONAL)
    except _Captured as captured:
        x = captured.x
    finally:
        handle.remove()
    with torch.no_grad():
        return mixer.mixing(x)
