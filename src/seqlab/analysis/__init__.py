"""Looking inside trained models: the implicit attention maps of their mixers (`mixing`)."""

from __future__ import annotations

from seqlab.analysis.mixing import mixing_matrix, mixing_mixers

__all__ = ["mixing_matrix", "mixing_mixers"]
