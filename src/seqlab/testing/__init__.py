"""The conformance kit: the invariants every mixer, objective and sampler must keep.

    from seqlab.testing import check_mixer
    report = check_mixer("my_pkg.mixers:MyMixer", expand=2)   # raises ConformanceError
    print(check_mixer(MyMixer, raise_on_failure=False))       # or just report

`check_mixer` runs every invariant that applies to what the mixer declares (`layouts`,
`state_kind`): split prefill and token-by-token decode equal the full pass (float64),
exact causality by gradient, the bidirectional, block-causal and block-diffusion layouts,
`state_size` against the state actually returned, no prefill kept alive by a fixed state,
a save/load round trip of a model built with it, and a small learning task.
`check_objective` and `check_sampler` do the same for objectives and decoders. Each
returns a `Report` listing every invariant (pass, fail, or skipped with the reason); a
failure raises `ConformanceError` unless `raise_on_failure=False`. `seqlab check NAME`
runs them from the command line.
"""

from seqlab.errors import ConformanceError
from seqlab.testing.mixers import MIXER_INVARIANT_NAMES, MIXER_INVARIANTS, check_mixer
from seqlab.testing.objectives import (
    OBJECTIVE_INVARIANT_NAMES,
    OBJECTIVE_INVARIANTS,
    check_objective,
)
from seqlab.testing.report import Invariant, Outcome, Report
from seqlab.testing.samplers import SAMPLER_INVARIANT_NAMES, SAMPLER_INVARIANTS, check_sampler

__all__ = [
    "MIXER_INVARIANTS",
    "MIXER_INVARIANT_NAMES",
    "OBJECTIVE_INVARIANTS",
    "OBJECTIVE_INVARIANT_NAMES",
    "SAMPLER_INVARIANTS",
    "SAMPLER_INVARIANT_NAMES",
    "ConformanceError",
    "Invariant",
    "Outcome",
    "Report",
    "check_mixer",
    "check_objective",
    "check_sampler",
]
