"""Power laws in error against state size for a comparison (Zoology's recall-against-memory
curves).

For a higher-is-better metric m ∈ [0, 1] (accuracy, exact match), each backbone's error
err = 1 − m over its grid points is fitted as

    err(S) = E + A·S^(−α),   S = the state size (numbers carried per sequence to decode),

with `seqlab.scaling.fit_power_law` (Huber on log error, bootstrap intervals that resample
grid points with all their seeds together) and checked by `held_out_check` (the largest
state size predicted from the others). A backbone needs `MIN_SIZES` distinct state sizes
(three parameters and at least one degree of freedom); points with zero error (perfect on
the test set, below its resolution) carry no log error and are left out, and said so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from seqlab.errors import SeqlabError
from seqlab.harness.grid import HIGHER_IS_BETTER, is_failed, seed_values
from seqlab.scaling import HeldOutCheck, PowerLawFit, fit_power_law, held_out_check

MIN_SIZES = 4


@dataclass(frozen=True)
class StateLaw:
    """One backbone's fit (None with the reason in `skipped` when it could not run), its
    held-out check, and how many points were perfect (left out)."""

    backbone: str
    fit: PowerLawFit | None
    held_out: HeldOutCheck | None
    skipped: str | None
    perfect: int

    def to_dict(self) -> dict[str, Any]:
        fit = self.fit
        return {
            "backbone": self.backbone,
            "skipped": self.skipped,
            "perfect_points_left_out": self.perfect,
            "fit": None
            if fit is None
            else {
                "E": fit.E.to_dict(),
                "A": fit.A.to_dict(),
                "alpha": fit.alpha.to_dict(),
                "state_size": fit.x.tolist(),
                "error": fit.y.tolist(),
                "rms_log_residual": fit.rms_log_residual,
            },
            "held_out": None if self.held_out is None else self.held_out.to_dict(),
        }


def applies(rows: list[dict[str, Any]]) -> bool:
    """One task's result rows call for state-size laws: an accuracy-type metric and some
    backbone seen at two or more state sizes."""
    if not rows or not HIGHER_IS_BETTER.get(rows[0]["metric"], False):
        return False
    return any(len(sizes) > 1 for sizes in _sizes_by_backbone(rows).values())


def state_size_laws(rows: list[dict[str, Any]]) -> list[StateLaw]:
    """The law of every backbone (`backbone/paradigm`) among one task's result rows."""
    metric = rows[0]["metric"]
    by_backbone: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not is_failed(row):
            by_backbone[backbone_label(row)].append(row)
    return [_law(name, points, metric) for name, points in sorted(by_backbone.items())]


def backbone_label(row: dict[str, Any]) -> str:
    return f"{row['backbone']}/{row['paradigm']}"


def _law(name: str, rows: list[dict[str, Any]], metric: str) -> StateLaw:
    sizes, errors, groups, perfect = [], [], [], 0
    for row in rows:
        values, _ = seed_values(row, metric)
        for value in values:
            if 1.0 - value <= 0.0:
                perfect += 1
                continue
            sizes.append(float(row["state_size"]))
            errors.append(1.0 - value)
            groups.append(row["point_id"])
    distinct = len(set(sizes))
    if distinct < MIN_SIZES:
        reason = f"{distinct} state size(s) with a nonzero error; a fit needs {MIN_SIZES}"
        return StateLaw(name, None, None, reason, perfect)
    try:
        fit = fit_power_law(sizes, errors, groups=groups)
        check = held_out_check(fit, holdout=1)
    except SeqlabError as err:
        return StateLaw(name, None, None, str(err), perfect)
    return StateLaw(name, fit, check, None, perfect)


def _sizes_by_backbone(rows: list[dict[str, Any]]) -> dict[str, set[float]]:
    sizes: dict[str, set[float]] = defaultdict(set)
    for row in rows:
        if not is_failed(row):
            sizes[backbone_label(row)].add(float(row["state_size"]))
    return sizes


def state_law_markdown(laws: list[StateLaw], metric: str) -> list[str]:
    """The report lines: one table row per backbone (or why it was not fitted)."""
    lines = [
        "",
        f"### Error against state size: 1 − {metric} = E + A·S^(−α)",
        "",
        "| backbone | points | E | A | α (95% CI) | held-out error (largest S) |",
        "|---|---|---|---|---|---|",
    ]
    for law in laws:
        fit = law.fit
        if fit is None:
            lines.append(f"| {law.backbone} | not fitted: {law.skipped} | | | | |")
            continue
        check = law.held_out
        held = f"{100 * check.mean_relative_error:.1f}%"
        if not check.predicts:
            held += " (does not predict)"
        alpha = fit.alpha
        ci = "no interval" if alpha.ci is None else f"[{alpha.ci.low:.3f}, {alpha.ci.high:.3f}]"
        lines.append(
            f"| {law.backbone} | {len(fit.x)} | {fit.E.value:.3g} | {fit.A.value:.3g} | "
            f"{alpha.value:.3f} {ci} | {held} |"
        )
    if any(law.perfect for law in laws):
        lines += ["", "Runs with zero test error are left out of the fits (no log error)."]
    return lines
