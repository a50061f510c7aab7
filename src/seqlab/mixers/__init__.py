"""Token mixers, one component per module; the registry (`seqlab.registry.MIXERS`) finds
them by importing every module of this package on first lookup."""

from seqlab.mixers.base import Layout, LayoutKind, Mixer
from seqlab.state import clone_state, map_state, reorder_state

__all__ = ["Layout", "LayoutKind", "Mixer", "clone_state", "map_state", "reorder_state"]
