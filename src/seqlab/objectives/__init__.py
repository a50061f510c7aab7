"""Generation paradigms; importing this package registers them all."""

from seqlab.objectives import any_order, ar, block, diffusion, mtp  # noqa: F401
from seqlab.objectives.base import NLL, Batch, Objective

__all__ = ["NLL", "Batch", "Objective", "build_objective"]


def build_objective(name: str, vocab_size: int | None = None, **options: object) -> Objective:
    """The objective `name` with its options, bound to the data vocabulary if given."""
    from seqlab.registry import OBJECTIVES, build_with_options

    objective = build_with_options(OBJECTIVES, name, **options)
    return objective if vocab_size is None else objective.bind(vocab_size)
