"""`seqlab compare`: train every run of a grid under the same budget, pick each grid point's
best learning rate on validation, evaluate on test, and write a leaderboard and plots.

Output directory:
    runs/<run_id>/      each run's training directory (checkpoints, metrics.jsonl, result.json)
    runs.csv            one row per run (every lr and seed)
    results.csv         one row per grid point: best lr, test metrics mean ± std over seeds,
                        the ranking metric's per-seed values (`test_<metric>_seeds`, seeds in
                        `seed_list`) and the 95% t interval of its mean (`test_<metric>_ci95_*`)
    results.md          the ranked leaderboard, one table per task
    plots/*.png         metric vs d_model / state size / training FLOPs, loss curves
    logs/<run_id>.stderr  the stderr of each run's worker process (with workers > 1)
A rerun skips finished runs (result.json) and resumes interrupted ones from their checkpoint.
A run that fails (diverges, raises, or its worker process dies) gets a result.json with
`status: failed` and the reason in `error` (for a dead worker, the last line of its stderr);
the comparison goes on without it, ranks a grid point none of whose runs finished last, and
a rerun retries failed runs only when asked
(`retry_failed`, `seqlab compare --retry-failed`).

Across machines: `compare_shard` trains one shard of the runs (`shard_of`: every N-th run id
in sorted order) into the shared `runs/`, and `collect` writes the report from the runs'
result.json once all have finished (`MissingRuns` names those that have not); `plan` lists
the runs with their tokens and FLOPs without training (`seqlab compare --shard/--collect/
--dry-run`, and `seqlab.harness.slurm` for a Slurm array of shards).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import statistics
import sys
import threading
import traceback
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seqlab.config import ExperimentConfig, to_dict
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError, SeqlabError
from seqlab.files import atomic_write_json, atomic_write_text, read_json
from seqlab.harness.grid import (
    HIGHER_IS_BETTER,
    CompareConfig,
    Run,
    dump,
    expand,
    is_failed,
    metric_for,
    point_labels,
)
from seqlab.harness.report import (
    leaderboard_markdown,
    pyplot,
    state_laws_by_task,
    write_plots,
)
from seqlab.harness.stats import mean_interval
from seqlab.io import load
from seqlab.model import build_model
from seqlab.objectives import build_objective
from seqlab.registry import TASKS
from seqlab.train import train
from seqlab.train.checkpoint import latest_checkpoint
from seqlab.train.dist import resolve_device
from seqlab.train.rundir import held_work


def describe_backbone(config: dict[str, Any]) -> str:
    model = config["model"]
    if model.get("baseline"):
        return model["baseline"]
    layers = model.get("layers")
    if not layers:
        return model["mixer"]
    if len(set(layers)) == 1:
        return layers[0]
    return "+".join(layers)


def run_header(run: Run) -> dict[str, Any]:
    """The columns of a run's row that its config alone determines (a failed run has them)."""
    config = run.config
    return {
        "run_id": run.run_id,
        "point_id": run.point_id,
        **{f"grid:{k}": v for k, v in point_labels(run.point).items()},
        "backbone": describe_backbone(to_dict(config)),
        "paradigm": config.objective.name,
        "task": config.task.name,
        "scores_answers": TASKS.get(config.task.name).target.scores_answers,
        # a baseline has no width or depth: its row leaves them empty, not the defaults
        "d_model": None if config.model.baseline else config.model.d_model,
        "n_layers": None if config.model.baseline else config.model.n_layers,
        "lr": run.lr,
        "seed": run.seed,
        "steps": config.train.steps,
    }


def finished_row(
    run: Run, out: str | os.PathLike[str], retry_failed: bool
) -> dict[str, Any] | None:
    """The row of `run` if it needs no training: finished, or failed and not to be retried.
    A failed result that is retried is kept beside it as `failed-N.json`."""
    done = run.directory(out) / "result.json"
    if not done.is_file():
        return None
    row = read_json(done)
    if not (is_failed(row) and retry_failed):
        return row
    attempt = 1
    while (done.parent / f"failed-{attempt}.json").exists():
        attempt += 1
    os.replace(done, done.parent / f"failed-{attempt}.json")
    return None


def record_failure(
    run: Run, out: str | os.PathLike[str], reason: str, details: str = ""
) -> dict[str, Any]:
    """Write and return the row of a run that failed: no metrics, and why (one line)."""
    lines = reason.strip().splitlines() or ["unknown error"]
    row = {**run_header(run), "status": "failed", "error": lines[0][:500], "details": details}
    atomic_write_json(run.directory(out) / "result.json", row)
    return row


def run_one(run: Run, out: str | os.PathLike[str], threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it on the test split; returns its row, also
    written to its `result.json`. Any exception makes it a failed run (the reason in the row)
    instead of ending the comparison."""
    try:
        return _train_and_test(run, run.directory(out), threads)
    except Exception as err:  # noqa: BLE001 - a failed cell must not end the comparison
        return record_failure(run, out, f"{type(err).__name__}: {err}", traceback.format_exc())


def resumable(config: ExperimentConfig, run_dir: Path) -> bool:
    """Whether the run in `run_dir` continues rather than starts: from its last checkpoint, or,
    for a baseline (which keeps none), whenever it wrote anything (it fits again, replacing
    only its own files, or returns its finished summary)."""
    if config.model.baseline is not None:
        return held_work(run_dir) is not None or (run_dir / "metrics.jsonl").is_file()
    return latest_checkpoint(run_dir) is not None


def _train_and_test(run: Run, run_dir: Path, threads: int | None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    config = run.config
    summary = train(config, run_dir, resume=resumable(config, run_dir), progress=False)
    # a run resumed from its last checkpoint gets both from that checkpoint (train.loop)
    validation, final_loss = summary["validation"] or {}, summary["final_loss"]
    model = load(run_dir, resolve_device(config.train.device))  # tested where it trained
    task = build_task(config)
    objective = build_objective(config.objective.name, task.vocab_size, **config.objective.options)
    torch.manual_seed(run.seed)
    test = task.evaluate(model, objective, split="test", max_tokens=config.train.eval_tokens)
    row = {
        **run_header(run),
        "status": "ok",
        "params": summary["params"],
        "active_params": summary.get("active_params", summary["params"]),
        "state_size": summary["state_size"],
        "train_tokens": summary["train_tokens"],
        "train_flops": summary["train_flops"],
        "seconds": summary["seconds"],
        "final_loss": final_loss,
        **{f"val_{k}": v for k, v in validation.items()},
        **{f"test_{k}": v for k, v in test.items()},
    }
    atomic_write_json(run_dir / "result.json", row)
    return row


def worker_device(device: str, slot: int, gpus: int) -> str:
    """The `train.device` of a run trained in parallel worker `slot`: with `auto` or `cuda` and
    several GPUs, each worker its own GPU, round-robin; otherwise `device` as it is."""
    return f"cuda:{slot % gpus}" if device in ("auto", "cuda") and gpus > 1 else device


def on_device(run: Run, device: str) -> Run:
    """`run` trained on `device` (its directory, name and results are the same)."""
    if device == run.config.train.device:
        return run
    train_config = dataclasses.replace(run.config.train, device=device)
    return dataclasses.replace(run, config=dataclasses.replace(run.config, train=train_config))


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


def run_all(
    runs: list[Run],
    out: Path,
    workers: int,
    progress: bool | None,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """The row of every run, in order: finished ones read back, the others trained (in
    `workers` processes, one per run, when more than one)."""
    bar = tqdm(total=len(runs), desc="runs", disable=None if progress is None else not progress)
    rows: list[dict[str, Any] | None] = [finished_row(run, out, retry_failed) for run in runs]
    bar.update(sum(row is not None for row in rows))
    todo = [i for i, row in enumerate(rows) if row is None]
    if workers <= 1:
        for i in todo:
            bar.set_postfix_str(runs[i].run_id[:60])
            rows[i] = run_one(runs[i], out)
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        for i, row in _run_in_processes([runs[i] for i in todo], out, workers, threads):
            rows[todo[i]] = row
            bar.update(1)
    bar.close()
    return [row for row in rows if row is not None]


INTERRUPTED = 130  # the exit code of a worker stopped by Ctrl-C


def _worker(run: Run, out: str, threads: int) -> None:
    try:
        run_one(run, out, threads)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _run_in_processes(
    runs: list[Run], out: Path, workers: int, threads: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Train each run in its own process, `workers` at a time; yields (index, row) as runs
    end. A process that dies without writing its result (killed, out of memory, a crash in
    native code) makes its run a failed one; an interrupted one stops the comparison. A
    SIGTERM to this process ends it (exit 143) after its workers are terminated, so that no
    orphaned training goes on writing into `out`."""
    context = multiprocessing.get_context("spawn")
    waiting = list(enumerate(runs))
    running: dict[int, tuple[int, Any, int]] = {}
    gpus = torch.cuda.device_count()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main_thread else None
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i, run = waiting.pop(0)
                slot = min(set(range(workers)) - {s for _, _, s in running.values()})
                run = on_device(run, worker_device(run.config.train.device, slot, gpus))
                process = context.Process(
                    target=_worker, args=(run, str(out), threads), name=run.run_id[:60]
                )
                _start_with_stderr(process, worker_log(out, run))
                running[process.sentinel] = (i, process, slot)
            for sentinel in multiprocessing.connection.wait(list(running)):
                i, process, _ = running.pop(sentinel)
                process.join()
                if process.exitcode == INTERRUPTED:
                    raise KeyboardInterrupt
                done = runs[i].directory(out) / "result.json"
                if done.is_file():
                    yield i, read_json(done)
                else:
                    reason = f"its worker process died ({_exit_reason(process.exitcode)})"
                    last, tail = _log_tail(worker_log(out, runs[i]))
                    if last:
                        reason += f": {last}"
                    yield i, record_failure(runs[i], out, reason, tail)
    finally:
        for _, process, _ in running.values():
            process.terminate()
            process.join()
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def worker_log(out: str | os.PathLike[str], run: Run) -> Path:
    """Where a worker process's stderr goes: `logs/<run_id>.stderr` beside `runs/`."""
    return Path(out) / "logs" / f"{run.run_id}.stderr"


def _start_with_stderr(process: Any, log: Path) -> None:
    """Start `process` with its stderr (file descriptor 2, inherited by the spawned
    interpreter) appended to `log`, so that a worker that dies before it can record why (an
    import error, a crash in native code) leaves its traceback there."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "ab") as handle:
            os.dup2(handle.fileno(), 2)
            process.start()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _log_tail(log: Path, chars: int = 4000) -> tuple[str, str]:
    """The last non-empty line of a worker's stderr log and its last `chars` characters."""
    if not log.is_file():
        return "", ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - chars))
        tail = handle.read().decode("utf-8", errors="replace")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return (lines[-1][:300] if lines else ""), tail


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


PER_RUN_KEYS = ("run_id", "lr", "seed", "seconds", "final_loss", "status", "error", "details")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def aggregate(config: CompareConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point: the lr with the best mean validation metric, then that lr's
    test metrics as mean and std over seeds.

    Only runs that finished with a finite validation metric take part: among learning rates,
    the one with the most such runs wins, then the best mean. A point none of whose runs has
    one is a failed point (score NaN, `error` says why), ranked last."""
    by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_point[row["point_id"]].append(row)
    results = []
    for point_rows in by_point.values():
        metric = metric_for(config, point_rows[0]["task"], point_rows[0]["scores_answers"])
        sign = 1 if HIGHER_IS_BETTER.get(metric, False) else -1
        failed = [r for r in point_rows if is_failed(r)]
        by_lr: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for row in point_rows:
            if not is_failed(row) and _finite(row.get(f"val_{metric}")):
                by_lr[row["lr"]].append(row)
        template = next(iter(by_lr.values()))[0] if by_lr else point_rows[0]
        result = {
            k: v
            for k, v in template.items()
            if not k.startswith(("val_", "test_")) and k not in PER_RUN_KEYS
        }
        result.update({"metric": metric, "failed_runs": len(failed)})
        if not by_lr:
            result.update({"status": "failed", "error": _point_failure(point_rows, failed, metric)})
            result.update({"lr": math.nan, "seeds": 0, "score": math.nan})
            results.append(result)
            continue

        ranks = {
            lr: (len(lr_rows), sign * statistics.fmean(r[f"val_{metric}"] for r in lr_rows))
            for lr, lr_rows in by_lr.items()
        }
        best_lr = max(ranks, key=ranks.__getitem__)
        chosen = by_lr[best_lr]
        result.update(
            {
                "status": "ok",
                "error": "",
                "lr": best_lr,
                "seeds": len(chosen),
                "seconds": statistics.fmean(r["seconds"] for r in chosen),
            }
        )
        test_keys = sorted(
            {k for r in chosen for k in r if k.startswith("test_") and _number(r[k])}
        )
        for key in test_keys:
            values = [float(r[key]) for r in chosen if key in r]
            result[key] = statistics.fmean(values)
            result[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        result.update(seed_columns(chosen, metric))
        result["test_bound"] = any(bool(r.get("test_bound")) for r in chosen)
        result["score"] = result.get(f"test_{metric}", math.nan)
        results.append(result)
    return results


def seed_columns(chosen: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The ranking metric's per-seed test values and their seeds (`;`-joined, in seed order,
    for results.csv), and with two seeds or more the 95% t interval of their mean."""
    key = f"test_{metric}"
    by_seed = sorted((r["seed"], float(r[key])) for r in chosen if _number(r.get(key)))
    if not by_seed:
        return {}
    columns: dict[str, Any] = {
        f"{key}_seeds": ";".join(repr(v) for _, v in by_seed),
        "seed_list": ";".join(str(s) for s, _ in by_seed),
    }
    interval = mean_interval([v for _, v in by_seed])
    if interval is not None:
        columns[f"{key}_ci95_low"], columns[f"{key}_ci95_high"] = interval
    return columns


def _point_failure(rows: list[dict[str, Any]], failed: list[dict[str, Any]], metric: str) -> str:
    """Why a grid point has no result, in one line."""
    if not failed:
        return f"no run has a validation {metric}"
    reasons = list(dict.fromkeys(r.get("error", "unknown error") for r in failed))
    more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
    if len(failed) == len(rows):
        return f"all {len(rows)} runs failed: {reasons[0]}{more}"
    return (
        f"{len(failed)} of {len(rows)} runs failed ({reasons[0]}{more}); the others have "
        f"no validation {metric}"
    )


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
    retry_failed: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Run the comparison into `out`; returns the aggregated results (one per grid point).

    A run that fails (diverges, raises, or its worker process dies) is recorded as failed
    and the others go on; a rerun keeps it failed unless `retry_failed`. `plots` needs
    matplotlib, checked before anything trains (`plots_available()`). `device` replaces every
    run's `train.device`; parallel workers spread over several GPUs (`worker_device`)."""

    out = Path(out)
    runs = expand(config)
    if device is not None:
        runs = [on_device(run, device) for run in runs]
    check_earlier_stage(runs, out)
    if plots:
        pyplot()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", dump(config))
    rows = run_all(runs, out, workers or config.workers, progress, retry_failed)
    return write_report(config, out, rows, plots)


def write_report(
    config: CompareConfig, out: Path, rows: list[dict[str, Any]], plots: bool
) -> list[dict[str, Any]]:
    """runs.csv, results.csv, results.md and the plots from the runs' rows; returns the
    aggregated results."""
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if k != "details"} for r in rows])
    results = aggregate(config, rows)
    write_csv(out / "results.csv", results)
    laws = state_laws_by_task(results)
    if laws:
        atomic_write_json(
            out / "state_laws.json",
            {label: [law.to_dict() for law in task_laws] for label, task_laws in laws.items()},
        )
    else:  # an earlier report's laws no longer match this one's results
        (out / "state_laws.json").unlink(missing_ok=True)
    atomic_write_text(out / "results.md", leaderboard_markdown(config, results, rows, laws))
    if plots:
        write_plots(out, results, rows, laws)
    return results


# Sweeps across machines: shards of a grid, collecting their results, dry runs.


class MissingRuns(SeqlabError):
    """`collect` found runs without a result.json (`run_ids`, sorted)."""

    def __init__(self, message: str, run_ids: list[str]) -> None:
        super().__init__(message)
        self.run_ids = run_ids


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N): shard I of N, counted from 0 (as Slurm array task ids are)."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"--shard must be I/N with N >= 1 and I in 0..N-1, got {text!r}")
    return shard


def shard_numbers(runs: list[Run], count: int) -> dict[str, int]:
    """Each run id's shard among `count`: its place among the sorted run ids, modulo `count`,
    so that each run is in exactly one shard whatever machine expands the grid."""
    return {run_id: i % count for i, run_id in enumerate(sorted(run.run_id for run in runs))}


def shard_of(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    """The runs of shard (I, N) (`shard_numbers`), in their grid order."""
    index, count = shard
    numbers = shard_numbers(runs, count)
    return [run for run in runs if numbers[run.run_id] == index]


def compare_shard(
    config: CompareConfig,
    out: str | os.PathLike[str],
    shard: tuple[int, int],
    *,
    workers: int | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """Train shard (I, N) of the comparison into `out` (its runs in `runs/<run_id>/`, beside
    the other shards'); returns its runs' rows. Writes no leaderboard: `collect` does, once
    every shard has finished."""
    out = Path(out)
    runs = shard_of(expand(config), shard)
    check_earlier_stage(runs, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", dump(config))
    return train_shard(runs, out, shard, workers or config.workers, progress, retry_failed)


def train_shard(
    runs: list[Run],
    out: Path,
    shard: tuple[int, int],
    workers: int,
    progress: bool | None,
    retry_failed: bool,
) -> list[dict[str, Any]]:
    """`run_all` over a shard's runs, after recording the shard count in `out/shards.json`
    (the same for every shard) so that `collect_rows` can name the shards still missing."""
    atomic_write_json(out / "shards.json", {"count": shard[1]})
    return run_all(runs, out, workers, progress, retry_failed)


def collect_rows(
    runs: list[Run], out: str | os.PathLike[str], partial: bool = False
) -> list[dict[str, Any]]:
    """The rows of the finished (or failed) runs, read from their result.json; trains
    nothing. Raises `MissingRuns`, naming the runs without a result (and their shards when
    `out` was written by shards), unless `partial`; always when no run has a result."""
    rows = [read_json(run.directory(out) / "result.json") for run in runs if has_result(run, out)]
    missing = sorted(run.run_id for run in runs if not has_result(run, out))
    if missing and not rows:
        raise MissingRuns(
            f"none of the {len(runs)} runs has a result in {out}{_shards_named(runs, missing, out)}"
            "; nothing to report (train them first)",
            missing,
        )
    if missing and not partial:
        raise MissingRuns(
            f"{len(missing)} of {len(runs)} runs have no result in {out}"
            f"{_shards_named(runs, missing, out)}: {', '.join(missing)}; run them, or pass "
            "--partial to report without them",
            missing,
        )
    return rows


def _shards_named(runs: list[Run], missing: list[str], out: str | os.PathLike[str]) -> str:
    """Where the `missing` run ids are, " (shards I/N, ...)", when shards wrote `out`."""
    record = Path(out) / "shards.json"
    count = (read_json(record) if record.is_file() else {}).get("count")
    if not count:
        return ""
    numbers = shard_numbers(runs, count)
    names = sorted({f"{numbers[r]}/{count}" for r in missing})
    return f" (shard{'s' if len(names) > 1 else ''} {', '.join(names)})"


def has_result(run: Run, out: str | os.PathLike[str]) -> bool:
    return (run.directory(out) / "result.json").is_file()


def collect(
    config: CompareConfig,
    out: str | os.PathLike[str],
    *,
    partial: bool = False,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """The leaderboard, results and plots of a comparison whose runs were trained elsewhere
    (shards) into `out`, as `compare` writes them; trains nothing. Every run must have its
    result.json (else `MissingRuns`) unless `partial`."""
    out = Path(out)
    rows = collect_rows(expand(config), out, partial)
    if plots:
        pyplot()
    atomic_write_text(out / "compare.yaml", dump(config))
    return write_report(config, out, rows, plots)


def plan_row(run: Run, tokens_per_step: int, flops_per_step: float) -> dict[str, Any]:
    """A run as `--dry-run` lists it: its training tokens and analytic training FLOPs."""
    steps = run.config.train.steps
    return {
        "run_id": run.run_id,
        "backbone": describe_backbone(to_dict(run.config)),
        "lr": run.lr,
        "seed": run.seed,
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "train_flops": steps * flops_per_step,
    }


def plan(config: CompareConfig, shard: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Every run of the comparison (or of one shard) with its tokens and training FLOPs
    (3 x `Model.flops_per_token` x tokens, as training counts them; for a baseline its fit's
    arithmetic, `Baseline.fit_flops_for`, never below what its summary reports), measured on the
    meta device; trains nothing and writes nothing in the output directory."""
    from seqlab.harness.ladder import _Probe  # ladder imports this module

    runs = expand(config)
    steps: dict[str, tuple[int, float]] = {}  # point id -> tokens and FLOPs per step
    rows = []
    for run in shard_of(runs, shard) if shard else runs:
        if run.point_id not in steps:
            probe = _Probe(run.config)
            if run.config.model.baseline:  # fitted, not trained: its fit's count, as summaries
                model_config = dataclasses.replace(run.config.model, vocab_size=probe.vocab_size)
                flops = build_model(model_config).fit_flops_for(probe.tokens_per_step)
            else:
                flops = probe.measure({}, "analytic").flops_per_step
            steps[run.point_id] = (probe.tokens_per_step, flops)
        rows.append(plan_row(run, *steps[run.point_id]))
    return rows


def plan_table(rows: list[dict[str, Any]]) -> str:
    """The `--dry-run` listing: one line per run, then the totals."""
    width = max([len(r["run_id"]) for r in rows] + [6])
    name = max([len(r["backbone"]) for r in rows] + [8])
    lines = [
        f"{'run_id':<{width}} {'backbone':<{name}} {'lr':>8} {'seed':>4} {'steps':>7} "
        f"{'tokens':>12} {'FLOPs':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['run_id']:<{width}} {r['backbone']:<{name}} {r['lr']:>8.2g} {r['seed']:>4} "
            f"{r['steps']:>7} {r['tokens']:>12} {r['train_flops']:>10.3g}"
        )
    tokens = sum(r["tokens"] for r in rows)
    flops = sum(r["train_flops"] for r in rows)
    lines.append(f"total: {len(rows)} runs, {tokens} tokens, {flops:.3g} training FLOPs")
    return "\n".join(lines)
