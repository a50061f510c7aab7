"""`seqlab scale`: train a scaling ladder (`seqlab.harness.ladder`) with the comparison
harness, fit every law of `seqlab.scaling` per task and backbone, and report.

Output directory:
    runs/<run_id>/      each run's training directory (as `seqlab compare` writes it)
    runs.csv            one row per run: the compare columns plus backbone, size, budget,
                        params_non_embedding, compute (C as `scale.flops` counts it)
    scaling.json        {"mode", "flops", "tasks": {task: {"metric", "skipped", "report",
                        "isoflop", "records"}}}: "report" is `ScalingReport.to_dict()` (null
                        with the reason in "skipped" when no fit could run), "records" the
                        `RunRecord`s fitted, "isoflop" the parabola of each budget (isoflop
                        mode)
    scaling.md          one table per task (E, A, α with CI, held-out error and verdict,
                        compute-optimal exponents a, b), the crossovers, the IsoFLOP minima
    plots/*.png         `seqlab.harness.scale_plots`
Runs are trained, resumed, skipped when finished and recorded as failed exactly as in
`seqlab compare` (`run_all`). Each rung (grid point, size, budget) keeps the learning rate
with the best validation metric (`aggregate`); every seed of it becomes a `RunRecord`: N the
parameters without embeddings, D the tokens trained, L the final validation metric (1 − it
for a higher-is-better metric such as accuracy: an error), C the compute, and its curve the
validation metric logged along training at compute (C per step) × step.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqlab.errors import SeqlabError
from seqlab.files import atomic_write_json, atomic_write_text
from seqlab.harness.compare import aggregate, run_all, write_csv
from seqlab.harness.grid import HIGHER_IS_BETTER, is_failed
from seqlab.harness.ladder import Rung, ScaleConfig, dump_scale, expand_ladder, size_label
from seqlab.harness.report import human, pyplot
from seqlab.scaling import RunRecord, ScalingReport, fit_records
from seqlab.train.logging import read_metrics

MISSING = "—"


@dataclass
class IsoFlopCurve:
    """Loss against log N at one budget: the parabola L = p0·u² + p1·u + p2 (u = ln N) and
    its minimum, or why there is none."""

    backbone: str
    budget: float
    params: list[float]
    loss: list[float]
    coefficients: list[float] | None
    params_opt: float | None
    loss_opt: float | None
    skipped: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TaskScaling:
    """Everything `seqlab scale` found for one task."""

    task: str
    metric: str
    records: list[RunRecord]
    report: ScalingReport | None
    skipped: str | None
    isoflop: list[IsoFlopCurve]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "skipped": self.skipped,
            "report": None if self.report is None else self.report.to_dict(),
            "isoflop": [c.to_dict() for c in self.isoflop],
            "records": [{**r.__dict__, "curve": [list(p) for p in r.curve]} for r in self.records],
        }


def scale(
    config: ScaleConfig,
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: bool | None = None,
    plots: bool = True,
    retry_failed: bool = False,
) -> list[TaskScaling]:
    """Train the ladder into `out` and write its fits, report and plots."""
    out = Path(out)
    rungs = expand_ladder(config)
    if plots:
        pyplot()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scale.yaml", dump_scale(config))
    rows = run_all(
        [r.run for r in rungs], out, workers or config.compare.workers, progress, retry_failed
    )
    rows = [_ladder_row(rung, row, config) for rung, row in zip(rungs, rows, strict=True)]
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if k != "details"} for r in rows])
    tasks = fit_ladder(config, rungs, rows, out)
    atomic_write_json(
        out / "scaling.json",
        {
            "name": config.name,
            "mode": config.scale.mode,
            "flops": config.scale.flops,
            "tasks": {t.task: t.to_dict() for t in tasks},
        },
    )
    atomic_write_text(out / "scaling.md", scaling_markdown(config, tasks))
    if plots:
        from seqlab.harness.scale_plots import write_scale_plots

        write_scale_plots(out / "plots", config.scale.mode, tasks)
    return tasks


def _ladder_row(rung: Rung, row: dict[str, Any], config: ScaleConfig) -> dict[str, Any]:
    compute = math.nan
    if not is_failed(row):
        compute = rung.flops_per_step * row["steps"]
    return {
        **row,
        "backbone": rung.backbone,
        "size": size_label(rung.size),
        config.scale.unit: rung.budget,
        "params_non_embedding": rung.params,
        "compute": compute,
    }


def fit_ladder(
    config: ScaleConfig, rungs: list[Rung], rows: list[dict[str, Any]], out: Path
) -> list[TaskScaling]:
    """Per task: the records of each rung's best learning rate, every fit, the IsoFLOP
    parabolas."""
    by_id = {rung.run.run_id: rung for rung in rungs}
    results = aggregate(config.compare, rows)
    by_task: dict[str, list[tuple[Rung, dict[str, Any]]]] = defaultdict(list)
    metrics: dict[str, str] = {}
    for result in results:
        point_rows = [r for r in rows if r["point_id"] == result["point_id"]]
        rung = by_id[point_rows[0]["run_id"]]
        metrics[rung.task] = result["metric"]
        by_task.setdefault(rung.task, [])
        if is_failed(result):
            continue
        for row in point_rows:
            if row["lr"] == result["lr"] and not is_failed(row):
                by_task[rung.task].append((by_id[row["run_id"]], row))
    tasks = []
    for task, chosen in by_task.items():
        metric = metrics[task]
        kept = [(rung, _record(rung, row, metric, out)) for rung, row in chosen]
        kept = [(rung, record) for rung, record in kept if record is not None]
        records = [record for _, record in kept]
        report, skipped = None, None
        if not records:
            skipped = "no run finished with a finite validation metric"
        else:
            try:
                report = fit_records(
                    records, n_boot=config.scale.n_boot, holdout=_holdout(config.scale.holdout)
                )
            except SeqlabError as err:
                skipped = str(err)
        isoflop = _isoflop_curves(kept) if config.scale.mode == "isoflop" else []
        tasks.append(TaskScaling(task, metric, records, report, skipped, isoflop))
    return tasks


def _holdout(value: float) -> float | int:
    return int(value) if float(value).is_integer() and value >= 1 else float(value)


def loss_value(value: float, metric: str) -> float:
    """What the fits call loss: the metric, or 1 − it (an error) when higher is better."""
    return 1.0 - value if HIGHER_IS_BETTER.get(metric, False) else value


def _record(rung: Rung, row: dict[str, Any], metric: str, out: Path) -> RunRecord | None:
    final = row.get(f"val_{metric}")
    if not isinstance(final, int | float) or not math.isfinite(final):
        return None
    curve = []
    for entry in read_metrics(rung.run.directory(out) / "metrics.jsonl"):
        value = entry.get(f"val_{metric}")
        if isinstance(value, int | float) and math.isfinite(value) and entry.get("step"):
            curve.append((rung.flops_per_step * entry["step"], loss_value(value, metric)))
    return RunRecord(
        backbone=rung.backbone,
        params=float(rung.params),
        tokens=float(row["train_tokens"]),
        loss=loss_value(final, metric),
        compute=rung.flops_per_step * row["steps"],
        seed=row["seed"],
        curve=tuple(curve),
    )


def _isoflop_curves(kept: list[tuple[Rung, RunRecord]]) -> list[IsoFlopCurve]:
    """For each backbone and FLOP budget, the mean loss over seeds per size and the parabola
    in ln N through it."""
    groups: dict[tuple[str, float], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rung, record in kept:
        groups[(rung.backbone, rung.budget)][record.params].append(record.loss)
    curves = []
    for (backbone, budget), by_size in groups.items():
        params = sorted(by_size)
        loss = [statistics.fmean(by_size[n]) for n in params]
        curves.append(_parabola(backbone, budget, params, loss))
    return curves


def _parabola(backbone: str, budget: float, params: list[float], loss: list[float]) -> IsoFlopCurve:
    base = IsoFlopCurve(backbone, budget, params, loss, None, None, None, None)
    if len(params) < 3:
        base.skipped = f"a parabola needs 3 sizes or more, this budget has {len(params)}"
        return base
    u = np.log(np.asarray(params))
    p = np.polyfit(u, np.asarray(loss), 2)
    base.coefficients = [float(c) for c in p]
    if p[0] <= 0:
        base.skipped = "the parabola opens downward: no minimum"
        return base
    u_opt = -p[1] / (2 * p[0])
    base.params_opt = float(np.exp(u_opt))
    base.loss_opt = float(np.polyval(p, u_opt))
    if not u.min() <= u_opt <= u.max():
        base.skipped = "the minimum lies outside the sizes trained (extrapolated)"
    return base


def _ci(estimate: Any, spec: str = ".3g") -> str:
    if estimate is None:
        return MISSING
    text = f"{estimate.value:{spec}}"
    if estimate.ci is not None:
        text += f" [{estimate.ci.low:{spec}}, {estimate.ci.high:{spec}}]"
    return text


def _held_out(check: Any) -> tuple[str, str]:
    if check is None:
        return MISSING, MISSING
    verdict = "predicts" if check.predicts else "does not predict"
    return f"{100 * check.mean_relative_error:.2f}%", verdict


def scaling_markdown(config: ScaleConfig, tasks: list[TaskScaling]) -> str:
    scale = config.scale
    unit = "training tokens" if scale.mode == "grid" else "training FLOPs"
    lines = [
        f"# {config.name}: scaling",
        "",
        f"{len(scale.sizes)} sizes × {len(scale.budgets)} budgets ({unit}) per backbone, "
        f"mode {scale.mode}, compute counted as {scale.flops}. L(C) = E + A·C^(−α) is fitted "
        "through the compute-efficient frontier of every run's validation curve; intervals are "
        f"95% bootstrap intervals ({scale.n_boot} refits over runs). The held-out error is the "
        "mean relative error of predicting the largest-compute runs from a refit without them. "
        "a and b are the compute-optimal exponents N* ∝ C^a, D* ∝ C^b of the L(N, D) fit.",
    ]
    for task in tasks:
        lines += ["", f"## {task.task} ({task.metric})", ""]
        if task.report is None:
            lines.append(f"No fit: {task.skipped}.")
            continue
        header = ["backbone", "runs", "E", "A", "α", "held-out error", "verdict", "a", "b"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        notes = []
        for name, fit in task.report.backbones.items():
            law = fit.compute_law
            error, verdict = _held_out(fit.compute_held_out)
            allocation = None if fit.chinchilla is None else fit.chinchilla.allocation
            cells = [
                name,
                str(fit.runs),
                _ci(law and law.E),
                _ci(law and law.A),
                _ci(law and law.alpha),
                error,
                verdict if law else "skipped",
                _ci(allocation and allocation.a, ".2f"),
                _ci(allocation and allocation.b, ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
            notes += [f"- {name}: skipped {note}" for note in fit.notes]
        if notes:
            lines += ["", "Fits the data could not support:", "", *notes]
        if task.report.crossovers:
            lines += ["", "Crossovers of L(C):", ""]
            lines += [
                f"- {c.names[0]} vs {c.names[1]}: {c.summary()}" for c in task.report.crossovers
            ]
        if task.isoflop:
            lines += ["", "IsoFLOP minima (parabola in ln N per budget):", ""]
            lines += ["| backbone | C | N* | L* | note |", "|---|---|---|---|---|"]
            for c in task.isoflop:
                n_opt = MISSING if c.params_opt is None else human(c.params_opt)
                l_opt = MISSING if c.loss_opt is None else f"{c.loss_opt:.4f}"
                lines.append(
                    f"| {c.backbone} | {human(c.budget)} | {n_opt} | {l_opt} | {c.skipped or ''} |"
                )
    return "\n".join(lines) + "\n"
