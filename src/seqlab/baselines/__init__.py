"""Classical baselines (n-gram, HMM, most-popular, co-occurrence), one module each, as models
in the same harness: `model.baseline: NAME` builds one instead of the neural Model
(`seqlab.registry.BASELINES` finds them by importing every module of this package)."""

from seqlab.baselines.base import Baseline

__all__ = ["Baseline"]
