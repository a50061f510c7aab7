"""Generation paradigms, one per module; the registry (`seqlab.registry.OBJECTIVES`) finds
them by importing every module of this package on first lookup."""

from seqlab.objectives.base import NLL, Batch, Objective
from seqlab.registry import OBJECTIVES

__all__ = ["NLL", "Batch", "Objective", "build_objective"]


def build_objective(name: str, vocab_size: int | None = None, **options: object) -> Objective:
    """The objective `name` (or import path) with its options, bound to the data vocabulary
    if given."""
    objective = OBJECTIVES.build(name, **options)
    return objective if vocab_size is None else objective.bind(vocab_size)
