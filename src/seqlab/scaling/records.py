"""From run records to every fit of `seqlab.scaling`, per backbone: what `seqlab scale`
writes to scaling.json.

A record is one finished training run: its backbone, N (params), D (tokens), final loss L,
compute C (6·N·D unless given), seed, and optionally its validation curve of (compute, loss)
points along training (without one, its final point is its curve). Per backbone:

- L(C) = E + A·C^(−α) through the compute-efficient frontier of the curves, and its held-out
  check (runs held out by total compute). The seeds of one configuration (N, D) are first
  averaged into one curve (the mean loss and compute at each point, over the points all seeds
  have), so that the frontier, a minimum, is not biased low by seed noise; the bootstrap then
  resamples configurations;
- L(N, D) (`fit_chinchilla`) and its held-out check, when there are at least 6 runs over 2 or
  more distinct N and D, with the seeds of one configuration drawn together by the bootstrap;

then the crossover of every pair of backbones' L(C) within [the least compute on either
curve, 100 × the largest run's compute]. Each backbone's bootstrap has its own seed, derived
from `seed` and its name (stable across runs and processes), so that the refits of two
backbones are independent. A fit the data cannot support is skipped and its reason kept in
the backbone's `notes`; a pair whose crossover cannot be searched in the report's `notes`.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

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
    """Per backbone fits, the crossovers of their L(C) and why a pair has none (`notes`);
    `to_dict()` is scaling.json."""

    backbones: dict[str, BackboneScaling]
    crossovers: tuple[Crossover, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbones": {name: b.to_dict() for name, b in self.backbones.items()},
            "crossovers": [c.to_dict() for c in self.crossovers],
            "notes": list(self.notes),
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
        name: _fit_backbone(name, runs, n_boot, backbone_seed(seed, name), holdout, tolerance)
        for name, runs in by_backbone.items()
    }
    crossings, notes = [], []
    for a, b in itertools.combinations(fits, 2):
        law_a, law_b = fits[a].compute_law, fits[b].compute_law
        if law_a is None or law_b is None:
            continue
        runs = by_backbone[a] + by_backbone[b]
        c_min = min(c for r in runs for c, _ in r.points())
        c_max = max(r.total_compute for r in runs)
        if not c_min < c_max:
            notes.append(f"{a} vs {b}: no crossover searched, every run has compute {c_max:.3g}")
            continue
        crossings.append(crossover(law_a, law_b, c_min, c_max, names=(a, b)))
    return ScalingReport(fits, tuple(crossings), tuple(notes))


def backbone_seed(seed: int | None, name: str) -> int | None:
    """The bootstrap seed of backbone `name`: from `seed` and a checksum of the name (None
    stays None: unseeded)."""
    if seed is None:
        return None
    entropy = [seed, zlib.crc32(name.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def seed_means(runs: list[RunRecord]) -> tuple[list[np.ndarray], list[float]]:
    """One curve per configuration (N, D), in order of first appearance: the mean over its
    seeds of each point's (compute, loss), over the first k points, k the shortest curve;
    and each configuration's mean total compute."""
    by_config: dict[tuple[float, float], list[RunRecord]] = {}
    for run in runs:
        by_config.setdefault((run.params, run.tokens), []).append(run)
    curves, totals = [], []
    for seeds in by_config.values():
        points = [np.asarray(r.points(), dtype=float) for r in seeds]
        k = min(len(p) for p in points)
        curves.append(np.mean([p[:k] for p in points], axis=0).reshape(k, 2))
        totals.append(float(np.mean([r.total_compute for r in seeds])))
    return curves, totals


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
        curves, totals = seed_means(runs)
        law = fit_frontier_law(curves, compute=totals, n_boot=n_boot, seed=seed)
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
    if chin is not None and chin.allocation_note is not None:
        notes.append(f"N*(C), D*(C): {chin.allocation_note}")
    return BackboneScaling(name, len(runs), law, law_check, chin, chin_check, tuple(notes))
