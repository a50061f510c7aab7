"""Every config that ships with seqlab loads and builds its task, objective and model.

`configs/*.yaml` are the reproductions documented in docs/results.md: a comparison (a `grid`)
or a single experiment for `seqlab train --config`. The built-in experiments and presets
ship inside the package. A typo in any of them would only show when a user runs it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from seqlab.config import ExperimentConfig, list_presets, load_config, read_config_mapping
from seqlab.harness.grid import (
    expand,
    list_experiments,
    load_compare_config,
    resolve_experiment,
)
from seqlab.harness.ladder import expand_ladder, load_scale_config
from seqlab.train.loop import build_run

REPO_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _is_comparison(source: str | Path) -> bool:
    data = read_config_mapping(source)
    return "grid" in data and "scale" not in data


def _is_ladder(source: str | Path) -> bool:
    return "scale" in read_config_mapping(source)


def _check_ladder(source: str | Path) -> None:
    """A scaling ladder (`seqlab scale`) expands, and the smallest and largest size of every
    grid point build (every rung between differs only in width, depth and steps)."""
    rungs = expand_ladder(load_scale_config(source))
    assert rungs, f"{source}: the ladder expands to no runs"
    by_point: dict[str, list] = {}
    for rung in rungs:
        by_point.setdefault(rung.backbone, []).append(rung)
    for point_rungs in by_point.values():
        by_size = sorted(point_rungs, key=lambda r: r.params)
        for rung in (by_size[0], by_size[-1]):
            _check_experiment(rung.run.config)


def _with_local_data(experiment: ExperimentConfig, scratch: Path) -> ExperimentConfig:
    """A config that reads a file a script writes into the git-ignored data/ folder (the
    Wikipedia sample of `scripts/wikipedia_sample.sh`, MovieLens-100k of
    `scripts/movielens.sh`, the UCR sets of `scripts/ucr.sh`) is built on a small file
    written here when that file is absent, as on a fresh clone; the music task on three
    chorales."""
    options = experiment.task.options
    if experiment.task.name == "seqrec" and not Path(options.get("path", "")).is_file():
        from tests.data.tasks.test_seqrec import write_pattern

        local = {**options, "path": str(write_pattern(scratch / "interactions.inter"))}
        task = dataclasses.replace(experiment.task, options=local)
        return dataclasses.replace(experiment, task=task)
    if experiment.task.name == "ts_classification" and not Path(options["path"]).is_dir():
        from tests.data.tasks.test_ts_classification import write_ramps

        local = {**options, "path": str(write_ramps(scratch / "ucr"))}
        task = dataclasses.replace(experiment.task, options=local)
        return dataclasses.replace(experiment, task=task)
    data = experiment.data
    if experiment.task.name == "music":  # three chorales parse in a second, all in a minute
        task = dataclasses.replace(
            experiment.task, options={**experiment.task.options, "max_chorales": 3}
        )
        local = dataclasses.replace(data, cache_dir=str(scratch / "cache"))
        return dataclasses.replace(experiment, task=task, data=local)
    if data.corpus != "wikipedia" or Path(data.path).is_file():
        return experiment
    from tests.data.test_wikipedia_corpus import FILLER, page, write_dump

    dump = scratch / "dump.xml"
    if not dump.is_file():
        write_dump(dump, [page(f"Article {i}", f"Article {i}. {FILLER}") for i in range(60)])
    local = dataclasses.replace(data, path=str(dump), cache_dir=str(scratch / "cache"))
    return dataclasses.replace(experiment, data=local)


def _check_experiment(experiment: ExperimentConfig, scratch: Path | None = None) -> None:
    """What `seqlab train` builds before its first step: a bad task parameter, objective
    option or mixer option fails here (the text task reads the built-in corpus)."""
    if scratch is not None:
        experiment = _with_local_data(experiment, scratch)
    parts = build_run(experiment)
    assert parts.task.vocab_size > 0 and parts.task.seq_len > 0
    assert parts.model.config.vocab_size >= parts.task.vocab_size


def test_the_repository_ships_its_documented_configs():
    names = {p.stem for p in REPO_CONFIGS}
    assert {"mqar-attention", "selective-copy", "selective-copy-long", "parity"} <= names
    assert "quickstart" in list_experiments()


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=[p.stem for p in REPO_CONFIGS])
def test_repository_config_loads_and_builds(path: Path, tmp_path: Path):
    if _is_ladder(path):
        _check_ladder(path)
    elif _is_comparison(path):
        runs = expand(load_compare_config(path))
        assert runs, f"{path.name}: the grid expands to no runs"
        for run in runs:
            _check_experiment(run.config, tmp_path)
    else:
        _check_experiment(load_config(path), tmp_path)


@pytest.mark.parametrize("name", list_experiments())
def test_builtin_experiment_expands(name: str):
    if _is_ladder(resolve_experiment(name)):
        _check_ladder(name)
        return
    runs = expand(load_compare_config(name))
    assert runs
    for run in runs:
        _check_experiment(run.config)


@pytest.mark.parametrize("name", list_presets())
def test_preset_loads(name: str):
    _check_experiment(load_config(name))


LATER_STAGES = [
    p for p in REPO_CONFIGS if _is_comparison(p) and load_compare_config(p).init_from is not None
]


def test_the_length_curriculum_ships_as_a_later_stage():
    assert "selective-copy-long-from-short" in {p.stem for p in LATER_STAGES}


@pytest.mark.parametrize("path", LATER_STAGES, ids=[p.stem for p in LATER_STAGES])
def test_a_later_stage_names_a_shipped_earlier_stage(path: Path):
    """A config with `init_from: runs/NAME` continues the comparison of configs/NAME.yaml:
    that config ships and has a run of every id this one starts from."""
    stage = Path(load_compare_config(path).init_from)
    earlier = path.parent / f"{stage.name}.yaml"
    assert stage.parent == Path("runs") and earlier.is_file(), f"{path.name}: {stage}"
    earlier_ids = {run.run_id for run in expand(load_compare_config(earlier))}
    assert {run.run_id for run in expand(load_compare_config(path))} <= earlier_ids
