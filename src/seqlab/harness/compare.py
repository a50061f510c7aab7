"""`seqlab compare`: train every run of a grid under the same budget, pick each grid point's
best learning rate on validation, evaluate on test, and write a leaderboard and plots.

Output directory:
    runs/<run_id>/      each run's training directory (checkpoints, metrics.jsonl, result.json)
    runs.csv            one row per run (every lr and seed)
    results.csv         one row per grid point: best lr, test metrics mean ± std over seeds
    results.md          the ranked leaderboard, one table per task
    plots/*.png         metric vs d_model / state size / training FLOPs, loss curves
A rerun skips finished runs (result.json) and resumes interrupted ones from their checkpoint.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seqlab.config import to_dict
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError
from seqlab.files import atomic_write_json, atomic_write_text, read_json
from seqlab.harness.grid import (
    HIGHER_IS_BETTER,
    CompareConfig,
    Run,
    dump,
    expand,
    metric_for,
    point_labels,
)
from seqlab.harness.report import leaderboard_markdown, write_plots
from seqlab.io import load
from seqlab.objectives import build_objective
from seqlab.train import train
from seqlab.train.checkpoint import latest_checkpoint


def describe_backbone(config: dict[str, Any]) -> str:
    model = config["model"]
    layers = model.get("layers")
    if not layers:
        return model["mixer"]
    if len(set(layers)) == 1:
        return layers[0]
    return "+".join(layers)


def run_one(run: Run, out: str, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it on the test split; returns its row."""

    run_dir = run.directory(out)
    done = run_dir / "result.json"
    if done.is_file():
        return read_json(done)
    if threads:
        torch.set_num_threads(threads)
    summary = train(
        run.config, run_dir, resume=latest_checkpoint(run_dir) is not None, progress=False
    )
    model = load(run_dir)
    config = run.config
    task = build_task(config)
    objective = build_objective(config.objective.name, task.vocab_size, **config.objective.options)
    torch.manual_seed(run.seed)
    test = task.evaluate(model, objective, split="test", max_tokens=config.train.eval_tokens)
    model_config = to_dict(config)
    row = {
        "run_id": run.run_id,
        "point_id": run.point_id,
        **{f"grid:{k}": v for k, v in point_labels(run.point).items()},
        "backbone": describe_backbone(model_config),
        "paradigm": config.objective.name,
        "task": config.task.name,
        "scores_answers": task.scores_answers,
        "d_model": config.model.d_model,
        "n_layers": config.model.n_layers,
        "lr": run.lr,
        "seed": run.seed,
        "steps": config.train.steps,
        "params": summary["params"],
        "state_size": summary["state_size"],
        "train_tokens": summary["train_tokens"],
        "train_flops": summary["train_flops"],
        "seconds": summary["seconds"],
        "final_loss": summary["final_loss"],
        **{f"val_{k}": v for k, v in summary["validation"].items()},
        **{f"test_{k}": v for k, v in test.items()},
    }
    atomic_write_json(done, row)
    return row


def check_earlier_stage(runs: list[Run], out: Path) -> None:
    """Before anything trains: every run that will start from an earlier stage (`init_from`;
    not finished, no checkpoint to resume from) finds that stage's finished run."""

    missing = [
        run.config.train.init_from
        for run in runs
        if run.config.train.init_from
        and not (Path(run.config.train.init_from) / "model.safetensors").is_file()
        and not (run.directory(out) / "result.json").is_file()
        and latest_checkpoint(run.directory(out)) is None
    ]
    if missing:
        raise ConfigError(
            f"init_from: no finished run (model.safetensors) in {', '.join(missing)}; the "
            "earlier comparison needs the same grid, learning rates and seeds, and must have "
            "finished"
        )


def _pool_run(args: tuple[Run, str, int | None]) -> dict[str, Any]:
    return run_one(*args)


def run_all(runs: list[Run], out: Path, workers: int, progress: bool | None) -> list[dict]:
    bar = tqdm(total=len(runs), desc="runs", disable=None if progress is None else not progress)
    rows: list[dict[str, Any]] = []
    if workers <= 1:
        for run in runs:
            bar.set_postfix_str(run.run_id[:60])
            rows.append(run_one(run, str(out)))
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            for row in pool.imap(_pool_run, [(r, str(out), threads) for r in runs]):
                rows.append(row)
                bar.update(1)
            # Let the workers exit on their own (the context manager would terminate them,
            # and the resource tracker would then report their progress-bar locks as leaked).
            pool.close()
            pool.join()
    bar.close()
    return rows


def aggregate(config: CompareConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point: the lr with the best mean validation metric, then that lr's
    test metrics as mean and std over seeds."""
    by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_point[row["point_id"]].append(row)
    results = []
    for point_rows in by_point.values():
        first = point_rows[0]
        metric = metric_for(config, first["task"], first["scores_answers"])
        sign = 1 if HIGHER_IS_BETTER.get(metric, False) else -1
        by_lr: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for row in point_rows:
            by_lr[row["lr"]].append(row)

        scores = {
            lr: sign * statistics.fmean(r.get(f"val_{metric}", math.nan) for r in lr_rows)
            for lr, lr_rows in by_lr.items()
        }
        best_lr = max(by_lr, key=lambda lr: scores[lr] if math.isfinite(scores[lr]) else -math.inf)
        chosen = by_lr[best_lr]
        result = {
            k: v
            for k, v in first.items()
            if not k.startswith(("val_", "test_"))
            and k not in ("run_id", "lr", "seed", "seconds", "final_loss")
        }
        result.update(
            {
                "metric": metric,
                "lr": best_lr,
                "seeds": len(chosen),
                "seconds": statistics.fmean(r["seconds"] for r in chosen),
            }
        )
        test_keys = sorted(
            {
                k
                for r in chosen
                for k in r
                if k.startswith("test_")
                and isinstance(r[k], int | float)
                and not isinstance(r[k], bool)
            }
        )
        for key in test_keys:
            values = [float(r[key]) for r in chosen if key in r]
            result[key] = statistics.fmean(values)
            result[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        result["score"] = result.get(f"test_{metric}", math.nan)
        results.append(result)
    return results


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, "".join(lines))


def compare(
    config: CompareConfig,
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: bool | None = None,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Run the comparison into `out`; returns the aggregated results (one per grid point)."""

    out = Path(out)
    runs = expand(config)
    check_earlier_stage(runs, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", dump(config))
    rows = run_all(runs, out, workers or config.workers, progress)
    write_csv(out / "runs.csv", rows)
    results = aggregate(config, rows)
    write_csv(out / "results.csv", results)
    atomic_write_text(out / "results.md", leaderboard_markdown(config, results))
    if plots:
        write_plots(out, results, rows)
    return results
