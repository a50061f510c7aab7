"""`seqlab compare` under faults: failed cells, resumes after a kill, unsafe names, no
matplotlib."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from seqlab.cli import main
from seqlab.config import to_dict
from seqlab.errors import ConfigError, SeqlabError
from seqlab.harness import compare as compare_module
from seqlab.harness.compare import aggregate, compare
from seqlab.harness.grid import CompareConfig, expand, load_compare_config
from seqlab.harness.report import leaderboard_markdown
from seqlab.train import train as real_train
from tests.harness.faults import FAULTY
from tests.helpers import ROOT, run_cli, tiny_config, write_corpus


@pytest.fixture
def grid(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=6, lines=30)
    base = tiny_config(
        corpus,
        tmp_path / "cache",
        model={"d_model": 16, "n_layers": 1},
        train={"steps": 6, "checkpoint_every": 3, "eval_every": 6, "eval_tokens": 256},
    )
    return CompareConfig(
        name="faults", base=base, grid={"model.d_model": [16, 32]}, lrs=[1e-3, 1e-2]
    )


def write_yaml(path, config: CompareConfig):
    path.write_text(yaml.safe_dump(to_dict(config)))
    return str(path)


def result_json(out, run):
    return json.loads((run.directory(out) / "result.json").read_text())


class FlakyTrain:
    """`train` that raises for the runs named in `failing` and counts what it trains."""

    def __init__(self, failing):
        self.failing, self.trained = set(failing), []

    def __call__(self, config, out_dir, **kwargs):
        self.trained.append(out_dir.name)
        if out_dir.name in self.failing:
            raise RuntimeError("injected crash\nsecond line of the message")
        return real_train(config, out_dir, **kwargs)


def test_a_failing_run_is_a_failed_cell_and_is_retried_only_when_asked(
    grid, tmp_path, monkeypatch, capsys
):
    runs = expand(grid)
    by_key = {(r.config.model.d_model, r.lr): r for r in runs}
    # d_model 32 fails at both learning rates (the grid point fails), d_model 16 at one
    failing = [by_key[16, 1e-2], by_key[32, 1e-3], by_key[32, 1e-2]]
    flaky = FlakyTrain(r.run_id for r in failing)
    monkeypatch.setattr(compare_module, "train", flaky)
    out = tmp_path / "out"
    results = compare(grid, out, progress=False, plots=False)

    assert sorted(flaky.trained) == sorted(r.run_id for r in runs), "every run was tried"
    for run in failing:
        row = result_json(out, run)
        assert row["status"] == "failed"
        assert row["error"] == "RuntimeError: injected crash"
        assert "Traceback" in row["details"] and "injected crash" in row["details"]
    assert result_json(out, by_key[16, 1e-3])["status"] == "ok"

    ok, failed = sorted(results, key=lambda r: r["d_model"])
    assert ok["status"] == "ok" and ok["lr"] == 1e-3 and ok["failed_runs"] == 1
    assert math.isfinite(ok["score"])
    assert failed["status"] == "failed" and math.isnan(failed["score"])
    assert failed["error"] == "all 2 runs failed: RuntimeError: injected crash"
    with open(out / "results.csv") as handle:
        rows = {int(r["d_model"]): r for r in csv.DictReader(handle)}
    assert rows[32]["status"] == "failed" and "injected crash" in rows[32]["error"]
    with open(out / "runs.csv") as handle:
        assert [r["status"] for r in csv.DictReader(handle)].count("failed") == 3

    table = [
        line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")
    ]
    assert table[-1].startswith("| 2 |") and "failed: all 2 runs failed" in table[-1]
    assert table[-2].startswith("| 1 |") and "failed" not in table[-2]
    markdown = (out / "results.md").read_text()
    for run in failing:
        assert f"- `{run.run_id}`: RuntimeError: injected crash" in markdown

    # a rerun trains nothing: the failed runs stay failed
    flaky.trained.clear()
    config_path = write_yaml(tmp_path / "faults.yaml", grid)
    assert main(["compare", config_path, "--out", str(out)]) == 0
    assert flaky.trained == []
    err = capsys.readouterr().err
    assert "3 run(s) failed (reasons in results.md); rerun with --retry-failed" in err

    # --retry-failed trains exactly the failed runs again, keeping the earlier failure
    flaky.failing.clear()
    assert main(["compare", config_path, "--out", str(out), "--retry-failed"]) == 0
    assert sorted(flaky.trained) == sorted(r.run_id for r in failing)
    for run in failing:
        assert result_json(out, run)["status"] == "ok"
        kept = json.loads((run.directory(out) / "failed-1.json").read_text())
        assert kept["error"] == "RuntimeError: injected crash"
    assert "run(s) failed" not in capsys.readouterr().err
    with open(out / "results.csv") as handle:
        assert {r["status"] for r in csv.DictReader(handle)} == {"ok"}


def test_diverged_and_killed_worker_processes_are_failed_cells(grid, tmp_path):
    """Runs in worker processes: one diverges (NaN loss), one's process is killed outright;
    the comparison finishes the third and records why the two failed."""
    grid.base["model"]["mixer"] = FAULTY
    faults = ("none", "nan", "kill", "exit")
    grid.grid = {"model.mixer_options": [{FAULTY: {"fault": f}} for f in faults]}
    grid.lrs = [1e-3]
    out = tmp_path / "out"
    results = compare(grid, out, workers=2, progress=False, plots=False)
    by_fault = {re.search(r"fault=(\w+)", r["grid:model.mixer_options"])[1]: r for r in results}
    assert set(by_fault) == set(faults)
    # a worker that dies after printing why: the last line of its stderr is the reason
    died = "its worker process died (exit code 3): Fatal: injected native crash"
    assert died in by_fault["exit"]["error"], by_fault["exit"]["error"]
    assert by_fault["none"]["status"] == "ok" and math.isfinite(by_fault["none"]["score"])
    assert by_fault["nan"]["status"] == "failed" and math.isnan(by_fault["nan"]["score"])
    assert re.search(r"step 1\b", by_fault["nan"]["error"]), by_fault["nan"]["error"]
    assert by_fault["kill"]["status"] == "failed"
    assert "worker process died (killed by signal SIGKILL)" in by_fault["kill"]["error"]
    lines = (out / "results.md").read_text().splitlines()
    ranked = [line for line in lines if line.startswith("| ")][1:]
    assert ranked[0].startswith("| 1 |") and "failed" not in ranked[0]
    assert all("| failed: all 1 runs failed: " in line for line in ranked[1:])
    run = next(r for r in expand(grid) if "exit" in r.run_id)
    assert (
        "injected native crash"
        in json.loads((run.directory(out) / "result.json").read_text())["details"]
    )


def test_a_run_resumed_after_its_last_checkpoint_keeps_its_validation_metrics(grid, tmp_path):
    """Killed after training but before its result was written (the last checkpoint and the
    metrics log are there, result.json is not): the rerun reports the same validation."""
    grid.grid = {"model.d_model": [16]}
    out = tmp_path / "out"
    (first,) = compare(grid, out, progress=False, plots=False)
    runs = expand(grid)
    before = {run.run_id: result_json(out, run) for run in runs}
    for run in runs:
        (run.directory(out) / "result.json").unlink()
        (run.directory(out) / "summary.json").unlink()
    log = {run.run_id: (run.directory(out) / "metrics.jsonl").read_text() for run in runs}
    (again,) = compare(grid, out, progress=False, plots=False)
    for run in runs:
        row, old = result_json(out, run), before[run.run_id]
        assert row["status"] == "ok"
        assert row["val_bits_per_byte"] == old["val_bits_per_byte"]
        assert row["val_nll"] == old["val_nll"]
        assert row["final_loss"] == old["final_loss"]
        assert (run.directory(out) / "metrics.jsonl").read_text() == log[run.run_id]
    assert again["lr"] == first["lr"] and again["score"] == first["score"]


def test_a_comparison_killed_mid_training_resumes(grid, tmp_path):
    """The whole `seqlab compare` process is killed at training step 5 of its first run; a
    rerun resumes that run from its step-3 checkpoint and reports its validation metrics."""
    grid.grid = {"model.d_model": [16]}
    grid.lrs = [1e-3]
    grid.base["model"]["mixer"] = FAULTY
    armed = tmp_path / "armed"
    armed.touch()
    grid.base["model"]["mixer_options"] = {
        FAULTY: {"fault": "kill", "after": 4, "armed": str(armed)}
    }
    out = tmp_path / "out"
    killed = run_cli(
        "compare", write_yaml(tmp_path / "kill.yaml", grid), "--out", str(out), cwd=ROOT
    )
    assert killed.returncode == -9
    (run,) = expand(grid)
    run_dir = run.directory(out)
    assert not (run_dir / "result.json").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000003"

    armed.unlink()  # the same config, now without the fault: the resume checks the model
    resumed = run_cli(
        "compare", write_yaml(tmp_path / "ok.yaml", grid), "--out", str(out), cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr
    row = result_json(out, run)
    assert row["status"] == "ok" and math.isfinite(row["val_bits_per_byte"])
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6], "resumed at step 4, not restarted"


def test_a_terminated_comparison_terminates_its_workers(grid, tmp_path):
    """SIGTERM to `seqlab compare` ends it (exit 143) only after its worker processes are
    gone: none is left training into the output folder."""
    grid.grid = {"model.d_model": [16, 32]}
    grid.lrs = [1e-3]
    grid.base["model"]["mixer"] = FAULTY
    workers = tmp_path / "workers"
    workers.mkdir()
    grid.base["model"]["mixer_options"] = {FAULTY: {"fault": "hang", "armed": str(workers)}}
    command = [sys.executable, "-m", "seqlab", "compare", write_yaml(tmp_path / "hang.yaml", grid)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [*command, "--out", str(tmp_path / "out"), "--workers", "2"], env=env, cwd=ROOT
    ) as process:
        deadline = time.monotonic() + 240
        while len(list(workers.iterdir())) < 2 and process.poll() is None:
            assert time.monotonic() < deadline, "the workers never started training"
            time.sleep(0.2)
        pids = [int(path.name) for path in workers.iterdir()]
        assert len(pids) == 2 and process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"worker processes {pids} outlived the comparison"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_learning_rate_selection_skips_failed_runs_and_runs_without_validation():
    def row(point, lr, seed, val=None, status="ok"):
        row = {"point_id": point, "task": "t", "scores_answers": True, "lr": lr, "seed": seed}
        row["run_id"] = f"{point}-{lr}-{seed}"
        if status == "failed":
            return {**row, "status": "failed", "error": "RuntimeError: boom"}
        row.update({"status": status, "seconds": 1.0, "test_accuracy": lr})
        return row if val is None else {**row, "val_accuracy": val}

    rows = [
        row("p", 0.1, 0, 0.99),  # best validation, but its other seed failed
        row("p", 0.1, 1, status="failed"),
        row("p", 0.2, 0, 0.98),  # its other seed has no validation metric
        row("p", 0.2, 1),
        row("p", 0.3, 0, 0.6),
        row("p", 0.3, 1, 0.7),
        row("q", 0.1, 0, status="failed"),
        row("q", 0.2, 0, status="failed"),
        row("r", 0.1, 0),  # finished, but without a validation metric
    ]
    p, q, r = aggregate(CompareConfig(), rows)
    assert p["status"] == "ok" and p["lr"] == 0.3 and p["seeds"] == 2
    assert p["score"] == pytest.approx(0.3) and p["failed_runs"] == 1
    assert q["status"] == "failed" and math.isnan(q["score"]) and q["seeds"] == 0
    assert q["error"] == "all 2 runs failed: RuntimeError: boom"
    assert r["status"] == "failed" and r["error"] == "no run has a validation accuracy"


def test_failed_points_rank_last_whatever_the_metric_direction():
    def result(point, score, status="ok"):
        return {
            "point_id": point,
            "task": "t",
            "backbone": point,
            "paradigm": "ar",
            "metric": "nll",
            "status": status,
            "error": "" if status == "ok" else "boom | bang",
            "seeds": 1 if status == "ok" else 0,
            "score": score,
            "test_nll": score,
            "lr": 0.1 if status == "ok" else math.nan,
            **({"params": 10, "state_size": 5, "train_flops": 1e6, "seconds": 1.0}),
        }

    results = [result("gone", math.nan, "failed"), result("b", 2.0), result("a", 1.0)]
    markdown = leaderboard_markdown(CompareConfig(), results, [])
    table = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[1] for line in table] == ["a", "b", "gone"]
    assert "failed: boom \\| bang" in table[2] and table[2].endswith("| — |")


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../sibling", "a/../../up", "", ".", "a/.."])
def test_a_name_that_leaves_the_output_root_is_refused(name, tmp_path, capsys):
    with pytest.raises(ConfigError, match="name must be a relative path inside the output root"):
        CompareConfig(name=name)
    path = tmp_path / "escape.yaml"
    path.write_text(yaml.safe_dump({"name": name, "grid": {"model.d_model": [16]}}))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqlab: error: name must be") and err.count("\n") == 1
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "sibling").exists()


def test_names_below_the_root_and_hostile_grid_values_stay_inside(tmp_path):
    assert load_compare_config(write_yaml(tmp_path / "ok.yaml", CompareConfig(name="a/b.c")))
    config = CompareConfig(grid={"data.path": ["../../etc", "/abs/../x", "..", "a/b\\c"]})
    out = tmp_path / "out"
    for run in expand(config):
        directory = run.directory(out)
        assert directory.parent == out / "runs" and directory.name not in (".", "..")
        assert directory.resolve().parent == (out / "runs").resolve()


def test_without_matplotlib_compare_writes_its_tables_and_says_plots_need_it(
    grid, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    grid.grid = {"model.d_model": [16]}
    grid.lrs = [1e-3]
    with pytest.raises(SeqlabError, match="plots need matplotlib"):
        compare(grid, tmp_path / "api", progress=False)
    assert not (tmp_path / "api").exists(), "refused before anything trained"

    out = tmp_path / "cli"
    assert main(["compare", write_yaml(tmp_path / "c.yaml", grid), "--out", str(out)]) == 0
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert not (out / "plots").exists()
    captured = capsys.readouterr()
    assert "| attention |" in captured.out
    lines = [line for line in captured.err.splitlines() if "matplotlib" in line]
    assert lines == [
        f"results: {out / 'results.csv'}; no plots: plots need matplotlib: "
        "pip install 'seqlab[plots]'"
    ]


def test_the_leaderboard_shows_active_params_only_beside_a_mixture_of_experts():
    def result(point, params, active):
        return {
            "point_id": point,
            "task": "t",
            "backbone": point,
            "paradigm": "ar",
            "metric": "nll",
            "status": "ok",
            "error": "",
            "seeds": 1,
            "score": 1.0,
            "test_nll": 1.0,
            "lr": 0.1,
            **{"params": params, "active_params": active, "state_size": 5},
            **{"train_flops": 1e6, "seconds": 1.0},
        }

    dense = leaderboard_markdown(CompareConfig(), [result("a", 2000, 2000)], [])
    assert "active params" not in dense
    mixed = [result("a", 2000, 2000), result("moe", 9000, 3000)]
    lines = leaderboard_markdown(CompareConfig(), mixed, []).splitlines()
    header = next(line for line in lines if line.startswith("| rank"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[columns.index("params") + 1] == "active params"
    row = next(line for line in lines if "| moe |" in line)
    assert "| 9k | 3k |" in row
