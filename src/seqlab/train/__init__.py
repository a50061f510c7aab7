"""Training: the loop, atomic checkpoints with exact resume, metrics logs, torchrun DDP."""

from seqlab.train.loop import train

__all__ = ["train"]
