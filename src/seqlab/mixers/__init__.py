"""Token mixers, one family per module; importing this package registers them all."""

from seqlab.mixers import (  # noqa: F401
    attention,  # noqa: F401
    deltanet,
    linear,
    mamba,
    mamba2,
    rnn,
    s4d,
)
from seqlab.mixers.base import Layout, Mixer, clone_state, map_state, reorder_state

__all__ = ["Layout", "Mixer", "clone_state", "map_state", "reorder_state"]
