"""Generation paradigms; importing this package registers them all."""

from seqlab.objectives import ar  # noqa: F401
from seqlab.objectives.base import NLL, Batch, Objective

__all__ = ["NLL", "Batch", "Objective", "build_objective"]


def build_objective(name: str, **options: object) -> Objective:
    from seqlab.registry import OBJECTIVES, build_with_options

    return build_with_options(OBJECTIVES, name, **options)
