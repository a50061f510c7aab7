"""Sweeps across machines: `--shard I/N`, `--collect`, `--dry-run` and the Slurm array
launcher (built and run through submitit's debug executor, never a real cluster)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import submitit
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from seqlab.cli import main
from seqlab.errors import ConfigError
from seqlab.harness.compare import (
    MissingRuns,
    collect,
    collect_rows,
    compare,
    compare_shard,
    parse_shard,
    plan,
    shard_numbers,
    shard_of,
)
from seqlab.harness.grid import CompareConfig, expand, load_compare_config
from seqlab.harness.slurm import SlurmConfig, array_parameters, launch, shard_commands
from tests.helpers import tiny_config, write_corpus


def _config(tmp_path, points=(8, 16), lrs=(1e-2,)) -> dict:
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=30)
    base = tiny_config(
        corpus,
        tmp_path / "cache",
        model={"d_model": 8, "n_layers": 1, "n_heads": 1},
        data={"seq_len": 16},
        train={"steps": 3, "batch_size": 2, "eval_tokens": 64, "eval_every": 3, "warmup": 1},
    )
    return {
        "name": "tiny",
        "base": base,
        "grid": {"model.d_model": list(points)},
        "lrs": list(lrs),
        "seeds": [0],
    }


@pytest.fixture
def grid(tmp_path) -> CompareConfig:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    return load_compare_config(path)


def _without_timings(results: list[dict]) -> list[dict]:
    return sorted(
        ({k: v for k, v in r.items() if k != "seconds"} for r in results),
        key=lambda r: r["point_id"],
    )


def test_parse_shard_takes_i_of_n_from_zero_and_names_bad_input():
    assert parse_shard("0/1") == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1/0", "1", "a/b", "1/2/3", ""):
        with pytest.raises(ConfigError, match="--shard must be I/N"):
            parse_shard(bad)


def test_shards_split_every_run_into_exactly_one_whatever_the_order(tmp_path):
    config = load_compare_config(_write(tmp_path, _config(tmp_path, (8, 16, 24), (1e-3, 1e-2))))
    runs = expand(config)
    shuffled = runs[:]
    random.Random(0).shuffle(shuffled)
    for count in (1, 2, 4, 7):
        shards = [{r.run_id for r in shard_of(runs, (i, count))} for i in range(count)]
        again = [{r.run_id for r in shard_of(shuffled, (i, count))} for i in range(count)]
        assert shards == again
        assert sum(len(s) for s in shards) == len(runs) == 6
        assert set().union(*shards) == {r.run_id for r in runs}
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _write(tmp_path, config: dict):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_shards_then_collect_equal_one_unsharded_comparison(grid, tmp_path):
    shared, whole = tmp_path / "shared", tmp_path / "whole"
    first = compare_shard(grid, shared, (0, 2), progress=False)
    second = compare_shard(grid, shared, (1, 2), progress=False)
    assert len(first) == len(second) == 1
    assert not (shared / "results.csv").exists()  # a shard writes no leaderboard
    collected = collect(grid, shared, plots=False)
    unsharded = compare(grid, whole, progress=False, plots=False)
    assert _without_timings(collected) == _without_timings(unsharded)
    with open(shared / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    # the dry run's tokens and FLOPs are those training counted
    trained = {r["run_id"]: r for r in first + second}
    for row in plan(grid):
        assert row["tokens"] == trained[row["run_id"]]["train_tokens"]
        assert row["train_flops"] == pytest.approx(trained[row["run_id"]]["train_flops"])


def test_collect_names_the_missing_shard_and_exits_2_unless_partial(grid, tmp_path, capsys):
    out = tmp_path / "out"
    compare_shard(grid, out, (0, 2), progress=False)
    (missing,) = [r.run_id for r in shard_of(expand(grid), (1, 2))]
    with pytest.raises(MissingRuns, match=r"1 of 2 runs .*\(shard 1/2\)") as err:
        collect(grid, out, plots=False)
    assert err.value.run_ids == [missing]

    source = str(tmp_path / "tiny.yaml")
    assert main(["compare", source, "--out", str(out), "--collect"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and missing in line and "shard 1/2" in line
    assert not (out / "results.md").exists()

    assert main(["compare", source, "--out", str(out), "--collect", "--partial"]) == 0
    captured = capsys.readouterr()
    assert f"report without 1 unfinished run(s): {missing}" in captured.err
    assert (out / "results.md").is_file()


@pytest.mark.parametrize("sharded", [False, True])
def test_collect_with_no_finished_run_exits_2_and_writes_nothing(grid, tmp_path, capsys, sharded):
    out = tmp_path / "out"
    if sharded:
        out.mkdir()
        (out / "shards.json").write_text('{"count": 2}')
    with pytest.raises(MissingRuns, match="none of the 2 runs has a result") as err:
        collect(grid, out, partial=True, plots=False)
    assert err.value.run_ids == sorted(r.run_id for r in expand(grid))
    source = str(tmp_path / "tiny.yaml")
    assert main(["compare", source, "--out", str(out), "--collect", "--partial"]) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "nothing to report" in line
    assert ("(shards 0/2, 1/2)" in line) == sharded
    if sharded:
        assert sorted(p.name for p in out.iterdir()) == ["shards.json"]
    else:
        assert not out.exists()


def test_missing_runs_are_named_by_the_shard_that_trains_them(tmp_path):
    config = load_compare_config(_write(tmp_path, _config(tmp_path, (8, 16, 24), (1e-3, 1e-2))))
    runs = expand(config)
    assert shard_numbers(runs, 4) == {r.run_id: i for i in range(4) for r in shard_of(runs, (i, 4))}
    for index in range(4):
        out = tmp_path / f"out{index}"
        (out / "runs").mkdir(parents=True)
        (out / "shards.json").write_text('{"count": 4}')
        mine = sorted(r.run_id for r in shard_of(runs, (index, 4)))
        for run in runs:
            if run.run_id not in mine:
                run.directory(out).mkdir(parents=True)
                (run.directory(out) / "result.json").write_text("{}")
        with pytest.raises(MissingRuns, match=rf"\(shard {index}/4\)") as err:
            collect_rows(runs, out)
        assert err.value.run_ids == mine


def test_a_ladder_shard_checks_its_earlier_stage_before_training(tmp_path, capsys):
    config = _config(tmp_path, points=(8,))
    config["init_from"] = str(tmp_path / "stage-1")
    config["scale"] = {"sizes": [{"d_model": 8, "n_layers": 1}], "budgets": [34], "evals": 1}
    source = str(_write(tmp_path, config))
    out = tmp_path / "ladder"
    for extra in (["--shard", "0/1"], []):
        assert main(["scale", source, "--out", str(out), *extra]) == 2
        line = capsys.readouterr().err
        assert line.count("\n") == 1 and "init_from: no finished run" in line
        assert not out.exists()


def test_dry_run_lists_runs_and_totals_and_writes_nothing(grid, tmp_path, capsys):
    out = tmp_path / "out"
    source = str(tmp_path / "tiny.yaml")
    assert main(["compare", source, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for run in expand(grid):
        assert run.run_id in printed
    rows = plan(grid)
    tokens = sum(r["tokens"] for r in rows)
    assert rows[0]["tokens"] == 3 * 2 * 17  # steps x batch x (seq_len + 1)
    assert f"total: 2 runs, {tokens} tokens" in printed
    assert not out.exists()
    assert main(["compare", source, "--out", str(out), "--dry-run", "--shard", "1/2"]) == 0
    assert "total: 1 runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard", "2/2"], "--shard must be I/N with N >= 1 and I in 0..N-1, got '2/2'"),
        (["--shard", "0/2", "--collect"], "--collect and --shard cannot be combined"),
        (["--partial"], "--partial only applies to --collect"),
        (["--dry-run", "--collect"], "--collect and --dry-run cannot be combined"),
        (["--shards", "2"], "--shards only applies to --slurm"),
    ],
)
def test_bad_sweep_options_exit_2_with_one_line(grid, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "tiny.yaml"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_scale_takes_the_same_shard_collect_and_dry_run_options(tmp_path, capsys):
    config = _config(tmp_path, points=(8,))
    del config["grid"]
    config["grid"] = {"model.mixer": ["attention"]}
    config["scale"] = {
        "sizes": [{"d_model": 8, "n_layers": 1}],
        "budgets": [34, 68],
        "evals": 1,
        "n_boot": 2,
    }
    source = str(_write(tmp_path, config))
    out = tmp_path / "ladder"
    assert main(["scale", source, "--out", str(out), "--dry-run"]) == 0
    assert "total: 2 runs, 102 tokens" in capsys.readouterr().out and not out.exists()
    assert main(["scale", source, "--out", str(out), "--collect", "--partial"]) == 2
    assert "nothing to report" in capsys.readouterr().err and not out.exists()
    assert main(["scale", source, "--out", str(out), "--shard", "0/2"]) == 0
    assert main(["scale", source, "--out", str(out), "--collect"]) == 2
    assert "(shard 1/2)" in capsys.readouterr().err
    assert main(["scale", source, "--out", str(out), "--shard", "1/2"]) == 0
    assert main(["scale", source, "--out", str(out), "--collect"]) == 0
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_slurm_array_parameters_make_a_valid_sbatch_script(tmp_path):
    config = SlurmConfig(
        partition="gpu",
        gpus_per_task=1,
        mem_gb=8,
        max_parallel=3,
        setup=["source .venv/bin/activate"],
        additional={"qos": "high"},
    )
    parameters = array_parameters(config, "seqlab-tiny", 5)
    submitit.AutoExecutor(tmp_path / "logs", cluster="debug").update_parameters(**parameters)
    script = _make_sbatch_string(
        command="python -m submitit.core._submit",
        folder=tmp_path,
        map_count=5,
        **{k.removeprefix("slurm_"): v for k, v in parameters.items()},
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-4%3",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --mem=8192M",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=seqlab-tiny",
        "source .venv/bin/activate",
    ):
        assert line in script
    commands = shard_commands("compare", tmp_path / "tiny.yaml", "out", 2)
    assert commands[1] == [
        "compare",
        str((tmp_path / "tiny.yaml").resolve()),
        "--shard",
        "1/2",
        "--out",
        str(Path("out").resolve()),
    ]


def test_slurm_section_is_checked_and_the_array_runs_shards_then_collects(tmp_path):
    config = _config(tmp_path)
    config["slurm"] = {"partitio": "gpu"}
    with pytest.raises(ConfigError, match="unknown config key 'slurm.partitio'"):
        load_compare_config(_write(tmp_path, config))
    config["slurm"] = {"partition": "gpu", "shards": 2}
    source = _write(tmp_path, config)
    grid = load_compare_config(source)
    out = tmp_path / "out"
    jobs = launch("compare", source, out, SlurmConfig(**grid.slurm), 2, cluster="debug")
    assert len(jobs) == 2 and [job.result() for job in jobs] == [0, 0]
    assert len(collect(grid, out, plots=False)) == 2
