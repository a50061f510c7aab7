"""Comparison configs and their expansion into runs (grid point x learning rate x seed).

A comparison YAML looks like

    name: quickstart
    base: {model: {d_model: 64}, train: {steps: 300}}   # an experiment config for every run
    grid:                                               # axes: dotted keys or whole sections
      model.mixer: [attention, gla]
      task: [{name: mqar, num_kv_pairs: 8}, {name: text}]
    lrs: [1.0e-3, 3.0e-3]                               # best per grid point on validation
    seeds: [0, 1]                                       # mean ± std over seeds
    metric: {mqar: accuracy, text: bits_per_byte}       # ranking metric per task (optional)
    task_overrides: {text: {data.seq_len: 128}}         # extra dotted keys per task (optional)
    init_from: runs/stage-1                             # optional, see below
    slurm: {partition: gpu, shards: 8}                  # optional, `seqlab.harness.slurm`

A comparison can be the next stage of an earlier one (a curriculum: short sequences first,
then long ones): with ``init_from: DIR`` every run starts from the weights of the run of the
same id (grid point, learning rate and seed) in the comparison written to ``DIR`` (a path
relative to the working directory, like ``--out``), through ``train.init_from``. Run ids
depend only on those, so the two comparisons must share their grid, learning rates and
seeds; `compare` checks that every run still to train finds its finished predecessor before
anything trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqlab.baselines.base import check_objective
from seqlab.config import (
    ExperimentConfig,
    apply_overrides,
    from_dict,
    read_config_mapping,
    to_dict,
)
from seqlab.errors import ConfigError, SeqlabError
from seqlab.harness.slurm import slurm_config
from seqlab.registry import BASELINES, MIXERS, OBJECTIVES, TASKS

HIGHER_IS_BETTER = {  # every metric a task reports, in the order of the leaderboard's columns
    "nll": False,
    "accuracy": True,
    "exact_match": True,
    "generated_accuracy": True,
    "generated_exact_match": True,
    "infill_nll": False,
    "infill_accuracy": True,
    "bits_per_byte": False,
    "dfa_valid": True,
    "brier": False,
    "allowed_rate": True,
    "full_hr10": True,
    "full_ndcg10": True,
    "sampled_hr10": True,
    "sampled_ndcg10": True,
    "note_nll": False,
    "mase": False,
    "smape": False,
    "crps": False,
    "naive_mase": False,
    "naive_smape": False,
    "naive_crps": False,
    "knn_accuracy": True,
    "mark_nll": False,
    "time_nll": False,
    "time_mae": False,
    "true_nll": False,
    "nll_gap": False,
    "hawkes_nll": False,
    "t_map": True,
    "otd": False,
}


@dataclass
class CompareConfig:
    name: str = "experiment"
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    lrs: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: dict[str, str] = field(default_factory=dict)
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int = 1
    init_from: str | None = None
    slurm: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_output_name(self.name)
        if self.slurm is not None:
            slurm_config(self.slurm)


def check_output_name(name: Any) -> None:
    """A comparison's `name` is its directory below the output root (`runs/<name>`), so it
    must be a relative path that stays there: not empty, not absolute, no `..` component."""
    parts = re.split(r"[\\/]", name) if isinstance(name, str) else []
    if (
        not isinstance(name, str)
        or name.startswith(("/", "\\"))
        or ".." in parts
        or all(part in ("", ".") for part in parts)
    ):
        raise ConfigError(
            f"name must be a relative path inside the output root (e.g. my-sweep, written "
            f"to runs/my-sweep), without '..', got {name!r}"
        )


@dataclass
class Run:
    """One training run: a grid point at one learning rate and seed."""

    point: dict[str, Any]
    lr: float
    seed: int
    config: ExperimentConfig

    @property
    def point_id(self) -> str:
        return run_slug(self.point)

    @property
    def run_id(self) -> str:
        return f"{self.point_id}__lr{self.lr:g}__seed{self.seed}"

    def directory(self, out: str | os.PathLike[str]) -> Path:
        """This run's training directory in the comparison written to `out`."""
        return Path(out) / "runs" / self.run_id


def experiments_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "experiments"


def list_experiments() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def load_compare_config(source: str | os.PathLike[str]) -> CompareConfig:
    """A comparison from a YAML path or a built-in experiment name (e.g. `quickstart`)."""
    path = resolve_experiment(source)
    data = read_config_mapping(path)
    if "scale" in data:
        raise ConfigError(
            f"{path.name} is a scaling ladder (it has a scale section): run it with seqlab scale"
        )
    config = from_dict(CompareConfig, data)
    for axis, values in config.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis} must be a non-empty list, got {values!r}")
    return config


def resolve_experiment(source: str | os.PathLike[str]) -> Path:
    """A comparison's or ladder's YAML: the path itself, else the built-in experiment of that
    name."""
    path = Path(source)
    if path.exists():
        return path
    builtin = experiments_dir() / f"{source}.yaml"
    if not builtin.exists():
        raise ConfigError(
            f"comparison {str(source)!r} is neither a file nor a built-in "
            f"experiment; built-in: {', '.join(list_experiments())}"
        )
    return builtin


def _label(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name", "")
        rest = ",".join(f"{k}={_label(v)}" for k, v in value.items() if k != "name")
        return f"{name}({rest})" if rest else str(name)
    if isinstance(value, list):
        return "+".join(_label(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_slug(point: dict[str, Any]) -> str:
    text = "_".join(f"{axis.split('.')[-1]}-{_label(v)}" for axis, v in point.items()) or "base"
    slug = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text)[:80]
    digest = hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()
    return f"{slug}-{digest[:6]}"


def point_labels(point: dict[str, Any]) -> dict[str, str]:
    return {axis: _label(value) for axis, value in point.items()}


def expand(config: CompareConfig) -> list[Run]:
    """Every run of the comparison, each config validated before anything trains."""
    base = read_config_mapping(None) | config.base
    axes = list(config.grid)
    for axis in axes:
        kept = config.base.get(axis) if "." not in axis else None
        if kept:
            keys = ", ".join(sorted(kept)) if isinstance(kept, dict) else repr(kept)
            raise ConfigError(
                f"grid axis {axis!r} replaces the whole {axis} section, so base.{axis} ({keys}) "
                f"would be ignored; put those keys in every {axis} entry of the grid, or make "
                f"the axis dotted ({axis}.KEY)"
            )
    runs = []
    for values in itertools.product(*(config.grid[a] for a in axes)):
        point = dict(zip(axes, values, strict=True))
        data = apply_overrides(base, {a: v for a, v in point.items() if "." in a})
        for axis, value in point.items():
            if "." not in axis:
                data[axis] = value
        task_name = (data.get("task") or {}).get("name", "text")
        data = apply_overrides(data, config.task_overrides.get(task_name, {}))
        try:
            experiment = from_dict(ExperimentConfig, data)
            check_names(experiment)
        except SeqlabError as err:
            raise ConfigError(f"grid point {point_labels(point)}: {err}") from None
        lrs = config.lrs or [experiment.train.lr]
        for lr, seed in itertools.product(lrs, config.seeds):
            cell = from_dict(
                ExperimentConfig,
                apply_overrides(to_dict(experiment), {"train.lr": lr, "train.seed": seed}),
            )
            runs.append(Run(point, float(lr), int(seed), cell))
    if config.init_from is not None:
        runs = [_from_earlier_stage(run, Path(config.init_from)) for run in runs]
    return runs


def _from_earlier_stage(run: Run, stage_dir: Path) -> Run:
    """`run` set to start from the run of the same id in the comparison `stage_dir` (that it
    has finished is checked by `compare` for the runs that still have to train)."""
    train = dataclasses.replace(run.config.train, init_from=str(run.directory(stage_dir)))
    return dataclasses.replace(run, config=dataclasses.replace(run.config, train=train))


def check_names(experiment: ExperimentConfig) -> None:
    """Fail early on unknown mixer, objective or task names (before anything trains)."""
    if experiment.model.baseline is not None:
        BASELINES.get(experiment.model.baseline)
        check_objective(experiment.objective.name)
    else:
        for name in experiment.model.layer_names():
            MIXERS.get(name)
    OBJECTIVES.get(experiment.objective.name)
    TASKS.get(experiment.task.name)


def metric_for(config: CompareConfig, task_name: str, scores_answers: bool) -> str:
    """The ranking metric of a task: configured, else the task's `metric_of_record`, else
    accuracy or bits per byte."""
    if task_name in config.metric:
        return config.metric[task_name]
    try:
        of_record = getattr(TASKS.get(task_name).target, "metric_of_record", None)
    except SeqlabError:  # a task no longer importable: its rows are ranked by the fallback
        of_record = None
    return of_record or ("accuracy" if scores_answers else "bits_per_byte")


def is_failed(row: dict[str, Any]) -> bool:
    """Whether a run's row (or a grid point's result) records a failure instead of metrics."""
    return row.get("status") == "failed"


def seed_values(row: dict[str, Any], metric: str) -> tuple[list[float], list[int] | None]:
    """A result row's per-seed test values of `metric` and their seeds (`aggregate`'s
    `test_<metric>_seeds` and `seed_list`); a row without them has its mean as one value."""
    joined = row.get(f"test_{metric}_seeds")
    if not joined:
        value = row.get(f"test_{metric}")
        missing = value is None or not math.isfinite(float(value))
        return ([] if missing else [float(value)]), None
    values = [float(v) for v in str(joined).split(";")]
    seeds = row.get("seed_list")
    return values, [int(s) for s in str(seeds).split(";")] if seeds else None


def dump(config: CompareConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
