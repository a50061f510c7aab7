"""Value heads: a continuous value beside every token (an inter-event time, a series value),
read as an input feature and predicted as a distribution, one module each
(`seqlab.registry.VALUE_HEADS` finds them by importing every module of this package)."""

from seqlab.heads.base import ValueHead

__all__ = ["ValueHead"]
