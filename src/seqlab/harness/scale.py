"""`seqlab scale`: train a scaling ladder (`seqlab.harness.ladder`) with the comparison
harness, fit every law of `seqlab.scaling` per task and backbone, and report.

Output directory:
    runs/<run_id>/      each run's training directory (as `seqlab compare` writes it)
    runs.csv            one row per run: the compare columns plus backbone, size, budget,
                        params_non_embedding, compute (C as `scale.flops` counts it: the
                        run's train_flops for analytic, 6·N·train_tokens for 6nd)
    scaling.json        {"mode", "flops", "tasks": {task: {"metric", "skipped", "report",
                        "isoflop", "records"}}}: "report" is `ScalingReport.to_dict()` (null
                        with the reason in "skipped" when no fit could run), "records" the
                        `RunRecord`s fitted, "isoflop" the parabola of each budget (isoflop
                        mode, `seqlab.scaling.isoflop`)
    scaling.md          `seqlab.harness.scale_report`
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

from seqlab.errors import SeqlabError
from seqlab.files import atomic_write_json, atomic_write_text
from seqlab.harness.compare import (
    aggregate,
    check_earlier_stage,
    collect_rows,
    has_result,
    plan_row,
    run_all,
    shard_of,
    train_shard,
    write_csv,
)
from seqlab.harness.grid import HIGHER_IS_BETTER, is_failed
from seqlab.harness.ladder import Rung, ScaleConfig, dump_scale, expand_ladder, size_label
from seqlab.harness.report import pyplot
from seqlab.harness.scale_report import scaling_markdown
from seqlab.scaling import RunRecord, ScalingReport, fit_records
from seqlab.scaling.chinchilla import FLOPS_PER_PARAM_TOKEN
from seqlab.scaling.isoflop import IsoFlopCurve, fit_isoflop
from seqlab.train.logging import read_metrics


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
    collect: bool = False,
    partial: bool = False,
) -> list[TaskScaling]:
    """Train the ladder into `out` and write its fits, report and plots. With `collect`,
    train nothing: read the runs' results (trained by `scale_shard`s) and fit them; every run
    must have one (else `MissingRuns`) unless `partial`."""
    out = Path(out)
    rungs = expand_ladder(config)
    if plots:
        pyplot()
    if collect:
        rows = collect_rows([r.run for r in rungs], out, partial)
        rungs = [r for r in rungs if has_result(r.run, out)]
    else:
        check_earlier_stage([r.run for r in rungs], out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scale.yaml", dump_scale(config))
    if not collect:
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

        write_scale_plots(out / "plots", config.scale.mode, tasks, config.scale.flops)
    return tasks


def scale_shard(
    config: ScaleConfig,
    out: str | os.PathLike[str],
    shard: tuple[int, int],
    *,
    workers: int | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """Train shard (I, N) of the ladder into `out` (`seqlab.harness.compare.shard_of`);
    fits nothing: `scale(..., collect=True)` does, once every shard has finished."""
    out = Path(out)
    runs = shard_of([r.run for r in expand_ladder(config)], shard)
    check_earlier_stage(runs, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scale.yaml", dump_scale(config))
    return train_shard(runs, out, shard, workers or config.compare.workers, progress, retry_failed)


def ladder_plan(config: ScaleConfig, shard: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Every run of the ladder (or of one shard) as `--dry-run` lists it; FLOPs as
    `scale.flops` counts them."""
    rungs = expand_ladder(config)
    mine = {r.run_id for r in shard_of([r.run for r in rungs], shard)} if shard else None
    return [
        plan_row(r.run, r.tokens_per_step, r.flops_per_step)
        for r in rungs
        if mine is None or r.run.run_id in mine
    ]


def run_compute(rung: Rung, row: dict[str, Any], flops: str) -> float:
    """A finished run's training compute C as `scale.flops` counts it: the harness's
    train_flops (analytic) or 6·N·train_tokens (6nd)."""
    if flops == "analytic":
        return float(row["train_flops"])
    return FLOPS_PER_PARAM_TOKEN * rung.params * float(row["train_tokens"])


def _ladder_row(rung: Rung, row: dict[str, Any], config: ScaleConfig) -> dict[str, Any]:
    compute = math.nan if is_failed(row) else run_compute(rung, row, config.scale.flops)
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
        flops = config.scale.flops
        kept = [(rung, _record(rung, row, metric, flops, out)) for rung, row in chosen]
        kept = [(rung, record) for rung, record in kept if record is not None]
        records = [record for _, record in kept]
        report, skipped = None, None
        if not records:
            skipped = "no run finished with a finite validation metric"
        else:
            try:
                report = fit_records(
                    records, n_boot=config.scale.n_boot, holdout=config.scale.holdout_value
                )
            except SeqlabError as err:
                skipped = str(err)
        isoflop = _isoflop_curves(kept) if config.scale.mode == "isoflop" else []
        tasks.append(TaskScaling(task, metric, records, report, skipped, isoflop))
    return tasks


def loss_value(value: float, metric: str) -> float:
    """What the fits call loss: the metric, or 1 − it (an error) when higher is better."""
    return 1.0 - value if HIGHER_IS_BETTER.get(metric, False) else value


def _record(
    rung: Rung, row: dict[str, Any], metric: str, flops: str, out: Path
) -> RunRecord | None:
    final = row.get(f"val_{metric}")
    if not isinstance(final, int | float) or not math.isfinite(final):
        return None
    compute = run_compute(rung, row, flops)
    per_step = compute / row["steps"]
    curve = []
    for entry in read_metrics(rung.run.directory(out) / "metrics.jsonl"):
        value = entry.get(f"val_{metric}")
        if isinstance(value, int | float) and math.isfinite(value) and entry.get("step"):
            curve.append((per_step * entry["step"], loss_value(value, metric)))
    return RunRecord(
        backbone=rung.backbone,
        params=float(rung.params),
        tokens=float(row["train_tokens"]),
        loss=loss_value(final, metric),
        compute=compute,
        seed=row["seed"],
        curve=tuple(curve),
    )


def _isoflop_curves(kept: list[tuple[Rung, RunRecord]]) -> list[IsoFlopCurve]:
    """For each backbone and FLOP budget, the mean loss (and tokens) over seeds per size and
    the parabola in ln N through it."""
    groups: dict[tuple[str, float], dict[float, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rung, record in kept:
        groups[(rung.backbone, rung.budget)][record.params].append(record)
    curves = []
    for (backbone, budget), by_size in groups.items():
        params = sorted(by_size)
        loss = [statistics.fmean(r.loss for r in by_size[n]) for n in params]
        tokens = [statistics.fmean(r.tokens for r in by_size[n]) for n in params]
        curves.append(fit_isoflop(backbone, budget, params, loss, tokens))
    return curves
