"""Scaling laws: the compute-efficient frontier, power-law and Chinchilla fits with bootstrap
intervals, held-out extrapolation checks and crossovers between fitted curves.

    L(C)    = E + A·C^(−α)                     fit_power_law, fit_frontier_law
    L(N, D) = E + A/N^α + B/D^β                fit_chinchilla (Hoffmann et al. 2022, approach 3)
    N_opt(C) = G·(C/6)^a, D_opt(C) = (C/6)^b / G,  a = β/(α+β), b = α/(α+β)
    L(ln N) = p0·(ln N)² + p1·ln N + p2 at one budget  fit_isoflop (IsoFLOP minima)

`fit_records(records)` runs all of them per backbone from `RunRecord`s (what `seqlab scale`
needs). Every result has `to_dict()` (JSON-ready: the numbers named as in the formulas, each
`{"value", "ci": [low, high]}`).
"""

from __future__ import annotations

from seqlab.scaling.bootstrap import N_BOOT, Bootstrap
from seqlab.scaling.chinchilla import Allocation, ChinchillaFit, fit_chinchilla
from seqlab.scaling.crossover import Crossing, Crossover, crossover
from seqlab.scaling.estimate import Estimate, Interval
from seqlab.scaling.frontier import Frontier, compute_frontier
from seqlab.scaling.held_out import HeldOutCheck, held_out_check
from seqlab.scaling.isoflop import IsoFlopCurve, fit_isoflop
from seqlab.scaling.objective import RefitFailed
from seqlab.scaling.power_law import PowerLawFit, fit_frontier_law, fit_power_law
from seqlab.scaling.records import BackboneScaling, RunRecord, ScalingReport, fit_records

__all__ = [
    "N_BOOT",
    "Allocation",
    "BackboneScaling",
    "Bootstrap",
    "ChinchillaFit",
    "Crossing",
    "Crossover",
    "Estimate",
    "Frontier",
    "HeldOutCheck",
    "Interval",
    "IsoFlopCurve",
    "PowerLawFit",
    "RefitFailed",
    "RunRecord",
    "ScalingReport",
    "compute_frontier",
    "crossover",
    "fit_chinchilla",
    "fit_frontier_law",
    "fit_isoflop",
    "fit_power_law",
    "fit_records",
    "held_out_check",
]
