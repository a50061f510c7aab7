"""Token mixers, one component per module; the registry (`seqlab.registry.MIXERS`) finds
them by importing every module of this package on first lookup. Decode-state utilities are
in `seqlab.state`."""

from seqlab.layout import Layout, LayoutKind
from seqlab.mixers.base import Mixer

__all__ = ["Layout", "LayoutKind", "Mixer"]
