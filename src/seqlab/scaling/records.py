"""From run records to every fit of `seqlab.scaling`, per backbone: what `seqlab scale`
writes to scaling.json.

A record is one finished training run: its backbone, N (params), D (tokens), final loss L,
compute C (6·N·D unless given), seed, and optionally its validation curve of (compute, loss)
points along training (without one, its final point is its curve). Per backbone:

- L(C) = E + A·C^(−α) through the compute-efficient frontier of the curves, and its held-out
  check;
- L(N, D) (`fit_chinchilla`) and its held-out check, when there are at least 6 runs over 2 or
  more distinct N and D;

with the seeds of one configuration (backbone, N, D) drawn together by the bootstrap; then the
crossover of every pair of backbones' L(C) within [smallest, 100 × largest] compute run.
A fit the data cannot support is skipped and its reason kept in `notes`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from seqlab.errors import DataError, SeqlabError
from seqlab.scaling.bootstrap import N_BOOT
from seqlab.scaling.chinchilla import FLOPS_PER_PARAM_TOKEN, ChinchillaFit, fit_chinchilla
from seqlab.scaling.crossover import Crossover, crossover
from seqlab.scaling.held_out import HOLDOUT, TOLERANCE, HeldOutCheck, held_out_check
from seqlab.scaling.power_law import PowerLawFit, fit_frontier_law


@dataclass(frozen=True)
class RunRecord:
    """One finished run (see the module docstring)."""

    backbone: str
    params: float
    tokens: float
    loss: float
    compute: float | None = None
    seed: int | None = None
    curve: tuple[tuple[float, float], ...] = ()

    @property
    def total_compute(self) -> float:
        return (
            FLOPS_PER_PARAM_TOKEN * self.params * self.tokens
            if self.compute is None
            else self.compute
        )

    def points(self) -> list[tuple[float, float]]:
        return list(self.curve) or [(self.total_compute, self.loss)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from a mapping of its field names (unknown keys are refused)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown run record keys {unknown}; expected some of {sorted(known)}")
        try:
            curve = tuple((float(c), float(l)) for c, l in data.get("curve", ()))
            return cls(**{**data, "curve": curve})
        except (TypeError, ValueError) as error:
            raise DataError(f"expected a run record with {sorted(known)}: {error}") from None


@dataclass(frozen=True)
class BackboneScaling:
    """Every fit of one backbone's runs (None where `notes` says why not)."""

    backbone: str
    runs: int
    compute_law: PowerLawFit | None
    compute_held_out: HeldOutCheck | None
    chinchilla: ChinchillaFit | None
    chinchilla_held_out: HeldOutCheck | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        def d(x: Any) -> Any:
            return None if x is None else x.to_dict()

        return {
            "backbone": self.backbone,
            "runs": self.runs,
            "compute_law": d(self.compute_law),
            "compute_held_out": d(self.compute_held_out),
            "chinchilla": d(self.chinchilla),
            "chinchilla_held_out": d(self.chinchilla_held_out),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ScalingReport:
    """Per backbone fits and the crossovers of their L(C); `to_dict()` is scaling.json."""

    backbones: dict[str, BackboneScaling]
    crossovers: tuple[Crossover, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbones": {name: b.to_dict() for name, b in self.backbones.items()},
            "crossovers": [c.to_dict() for c in self.crossovers],
        }


def fit_records(
    records: Iterable[RunRecord],
    *,
    n_boot: int = N_BOOT,
    seed: int | None = 0,
    holdout: float | int = HOLDOUT,
    tolerance: float = TOLERANCE,
) -> ScalingReport:
    """Every fit of `records`, per backbone in order of first appearance, and the crossovers
    (see the module docstring)."""
    by_backbone: dict[str, list[RunRecord]] = {}
    for record in records:
        by_backbone.setdefault(record.backbone, []).append(record)
    if not by_backbone:
        raise DataError("expected at least one run record")
    fits = {
        name: _fit_backbone(name, runs, n_boot, seed, holdout, tolerance)
        for name, runs in by_backbone.items()
    }
    crossings = []
    for a, b in itertools.combinations(fits, 2):
        law_a, law_b = fits[a].compute_law, fits[b].compute_law
        if law_a is None or law_b is None:
            continue
        computes = [r.total_compute for r in by_backbone[a] + by_backbone[b]]
        crossings.append(crossover(law_a, law_b, min(computes), max(computes), names=(a, b)))
    return ScalingReport(fits, tuple(crossings))


def _fit_backbone(
    name: str,
    runs: list[RunRecord],
    n_boot: int,
    seed: int | None,
    holdout: float | int,
    tolerance: float,
) -> BackboneScaling:
    notes: list[str] = []
    configs = [(r.params, r.tokens) for r in runs]
    law = law_check = chin = chin_check = None
    try:
        law = fit_frontier_law([r.points() for r in runs], groups=configs, n_boot=n_boot, seed=seed)
        law_check = held_out_check(law, holdout, tolerance)
    except SeqlabError as error:
        notes.append(f"L(C): {error}")
    try:
        chin = fit_chinchilla(
            [r.params for r in runs],
            [r.tokens for r in runs],
            [r.loss for r in runs],
            groups=configs,
            n_boot=n_boot,
            seed=seed,
        )
        chin_check = held_out_check(chin, holdout, tolerance)
    except SeqlabError as error:
        notes.append(f"L(N, D): {error}")
    return BackboneScaling(name, len(runs), law, law_check, chin, chin_check, tuple(notes))
