"""`seqlab compare` end to end on a tiny 2x2 grid."""

import csv

import pytest

from seqlab.cli import main
from seqlab.errors import ConfigError
from seqlab.harness.compare import aggregate, compare
from seqlab.harness.grid import CompareConfig, expand, load_compare_config
from tests.helpers import tiny_config, write_corpus


@pytest.fixture
def grid(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    base = tiny_config(
        corpus, tmp_path / "cache", train={"steps": 6, "checkpoint_every": 3, "eval_every": 6}
    )
    return CompareConfig(
        name="tiny",
        base=base,
        grid={"model.d_model": [16, 32], "model.n_layers": [1, 2]},
        lrs=[1e-3, 1e-2],
        seeds=[0],
    )


def test_expand_validates_every_point_up_front(grid):
    runs = expand(grid)
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    assert {r.config.train.lr for r in runs} == {1e-3, 1e-2}
    grid.grid["model.mixer"] = ["attention", "nope"]
    with pytest.raises(ConfigError, match="mixer 'nope'; valid mixers"):
        expand(grid)


def test_a_whole_section_axis_may_not_silently_drop_base_keys(grid):
    """A grid axis naming a whole section replaces it: base keys of that section would be
    lost, so they are refused; the same keys inside every entry are fine."""
    grid.base["model"] = {"d_model": 16, "n_layers": 1}
    grid.grid = {"model": [{"mixer": "gla"}, {"mixer": "attention"}]}
    with pytest.raises(ConfigError, match=r"base\.model \(d_model, n_layers\) would be ignored"):
        expand(grid)
    entries = [{"mixer": m, "d_model": 16, "n_layers": 1} for m in ("gla", "attention")]
    grid.grid = {"model": entries}
    del grid.base["model"]
    runs = expand(grid)
    assert {r.config.model.d_model for r in runs} == {16}


def test_compare_writes_results_and_skips_finished_runs(grid, tmp_path):
    out = tmp_path / "out"
    results = compare(grid, out, progress=False)
    assert len(results) == 4
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {
        "backbone",
        "params",
        "state_size",
        "train_flops",
        "seconds",
        "test_bits_per_byte",
    } <= set(rows[0])
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    markdown = (out / "results.md").read_text()
    assert markdown.count("| attention |") == 4 and "bits_per_byte ↓" in markdown
    plots = sorted((out / "plots").glob("*.png"))
    assert len(plots) == 4 and all(p.stat().st_size > 5000 for p in plots)

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    compare(grid, out, progress=False, plots=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_lr_selection_uses_validation_and_reports_seed_spread():
    rows = [
        {
            "point_id": "p",
            "task": "t",
            "scores_answers": True,
            "lr": lr,
            "seed": seed,
            "seconds": 1.0,
            "val_accuracy": val,
            "test_accuracy": test,
            "run_id": f"{lr}{seed}",
        }
        for lr, seed, val, test in [
            (0.1, 0, 0.9, 0.5),
            (0.1, 1, 0.8, 0.7),
            (0.3, 0, 0.95, 0.1),
            (0.3, 1, 0.5, 0.1),
        ]
    ]
    (result,) = aggregate(CompareConfig(), rows)
    assert result["lr"] == 0.1 and result["metric"] == "accuracy"
    assert result["test_accuracy"] == pytest.approx(0.6)
    assert result["test_accuracy_std"] == pytest.approx(0.1414, abs=1e-3)


def test_unknown_experiment_lists_builtins(capsys):
    with pytest.raises(ConfigError, match="built-in: .*quickstart"):
        load_compare_config("nope")
    assert main(["compare", "nope"]) == 2
    assert "quickstart" in capsys.readouterr().err


def first_loss(run_dir):
    import json

    with open(run_dir / "metrics.jsonl") as handle:
        return next(json.loads(line)["loss"] for line in handle if '"loss"' in line)


def test_a_comparison_can_start_from_an_earlier_one(grid, tmp_path):
    """`init_from`: each run of the second stage starts from the finished run of the same id
    in the first; a missing predecessor is named before anything trains."""
    import dataclasses

    grid.grid = {"model.d_model": [16, 32]}
    grid.lrs = [1e-2]
    first = tmp_path / "first"
    compare(grid, first, progress=False, plots=False)
    second = dataclasses.replace(grid, init_from=str(first))
    runs = expand(second)
    for run in runs:
        assert run.config.train.init_from == str(first / "runs" / run.run_id)
    compare(second, tmp_path / "second", progress=False, plots=False)
    assert (
        f"continues the run of the same id in `{first}`"
        in (tmp_path / "second" / "results.md").read_text()
    )
    assert "earlier stage" not in (first / "results.md").read_text()
    for run in runs:
        start, again = first / "runs" / run.run_id, tmp_path / "second" / "runs" / run.run_id
        assert "init_from" in (again / "config.yaml").read_text()
        assert first_loss(again) < first_loss(start) - 0.5, "the second stage starts trained"

    second.seeds = [0, 1]
    with pytest.raises(ConfigError, match=r"no finished run .*seed1; the earlier"):
        compare(second, tmp_path / "third", progress=False, plots=False)
    assert not (tmp_path / "third").exists(), "nothing trained"
