"""Tiny models for decoding tests: weights large enough that predictions vary."""

from __future__ import annotations

import copy

import torch

import seqlab
from seqlab.config import ModelConfig

PROMPTS = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10, 11, 12]]


def tiny(
    mixer: str = "attention", seed: int = 0, vocab: int = 20, layers: int = 2, std: float = 0.3
) -> seqlab.model.Model:
    torch.manual_seed(seed)
    return seqlab.build_model(
        ModelConfig(
            mixer=mixer, d_model=32, n_layers=layers, n_heads=4, vocab_size=vocab, init_std=std
        )
    ).eval()


def noisy_copy(model: seqlab.model.Model, noise: float, seed: int = 1) -> seqlab.model.Model:
    """A draft that agrees with `model` often but not always."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=generator))
    return draft


def flattened_copy(model: seqlab.model.Model, scale: float) -> seqlab.model.Model:
    """A draft whose logits are the model's times `scale` (its final norm scaled): the same
    ranking, a flatter distribution, so speculative sampling rejects it often but not always
    (acceptance 0.43-0.63 at scale 0.2 for std-0.5 targets, seeds 0-2, attention and gru)."""
    draft = copy.deepcopy(model)
    with torch.no_grad():
        draft.norm.weight.mul_(scale)
    return draft


def chi2_statistic(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """Pearson's χ² over the cells expected to hold more than 5 draws, and the value it stays
    below with probability 1 − 1e-4 under the null: the Wilson–Hilferty approximation of the
    χ² quantile for `cells − 1` degrees of freedom (z = 3.719), within 1 % of the exact value
    from 3 degrees of freedom up. Raises if fewer than 4 cells qualify (the test would be
    too weak to fail)."""
    keep = expected > 5
    df = int(keep.sum()) - 1
    assert df >= 3, f"only {df + 1} cells expect more than 5 draws: too few for a χ² test"
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    a = 2 / (9 * df)
    return chi2, df * (1 - a + 3.719 * a**0.5) ** 3


def row(out, i: int) -> list[int]:
    return out.tokens[i, : int(out.lengths[i])].tolist()
