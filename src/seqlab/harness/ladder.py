"""Scaling ladders: a comparison config with a `scale:` section, expanded into runs (grid
point × model size × training budget × learning rate × seed) for `seqlab scale`.

A ladder YAML is a comparison (`seqlab.harness.grid`: name, base, grid, lrs, seeds, metric,
task_overrides, workers) plus

    scale:
      mode: grid                  # grid: sizes x token budgets; isoflop: sizes x FLOP budgets
      sizes:                      # model shapes: any model.* keys ...
        - {d_model: 32, n_layers: 2}
        - {params: 2.0e+5, n_layers: 4}   # ... or a target non-embedding parameter count
      budgets: [1.0e+6, 4.0e+6]   # training tokens (grid) or training FLOPs C (isoflop)
      flops: analytic             # how C is counted: analytic (the harness's train FLOPs,
                                  # 3 x Model.flops_per_token x tokens) or 6nd (6 N D)
      evals: 8                    # validation points along each run (its curve)
      d_multiple: 16              # a {params: N} size's d_model is a multiple of this
      n_boot: 200                 # bootstrap refits of every fit
      holdout: 0.2                # share (or count) of the largest-compute runs held out:
                                  # a fraction in (0, 1) or a count below sizes x budgets

Every grid point (a backbone, or any point of the comparison's grid) is trained at every size
and budget. A `{params: N}` size is resolved to the d_model (a multiple of `d_multiple` and of
n_heads; n_layers and other keys as given, else the base's) whose parameters without the
input embedding are nearest N. The steps of a run are

    grid:     steps = round(D / tokens_per_step)
    isoflop:  steps = round(C / flops_per_step),  flops_per_step = 3·flops_per_token·tokens
              per step (analytic) or 6·N·tokens_per_step (6nd)

at least 1, so that C (or D) is met within half a step. N is the non-embedding parameter
count; tokens per step are read from one batch of the task. Validation runs every
`steps // evals` steps, giving each run its curve of (compute at the step, loss). The
learning rate is chosen per rung (grid point, size, budget) on final validation, as
`seqlab compare` chooses it per grid point.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from seqlab.config import ExperimentConfig, apply_overrides, from_dict, read_config_mapping, to_dict
from seqlab.data.tasks import build_task, model_config_for
from seqlab.errors import ConfigError, SeqlabError
from seqlab.harness.compare import describe_backbone
from seqlab.harness.grid import CompareConfig, Run, expand, point_labels, resolve_experiment
from seqlab.model import Model, build_model, count_parameters
from seqlab.objectives import build_objective
from seqlab.scaling.bootstrap import N_BOOT
from seqlab.scaling.chinchilla import FLOPS_PER_PARAM_TOKEN
from seqlab.scaling.held_out import HOLDOUT, validate_holdout

MODES = ("grid", "isoflop")
FLOP_COUNTS = ("analytic", "6nd")
MAX_D_MODEL = 1 << 16


@dataclass
class ScaleSection:
    sizes: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[Any] = field(default_factory=list)
    mode: str = "grid"
    flops: str = "analytic"
    evals: int = 8
    d_multiple: int = 16
    n_boot: int = N_BOOT
    holdout: float = HOLDOUT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"scale.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.flops not in FLOP_COUNTS:
            raise ConfigError(
                f"scale.flops must be one of {', '.join(FLOP_COUNTS)}, got {self.flops!r}"
            )
        if not self.sizes or not all(isinstance(s, dict) and s for s in self.sizes):
            raise ConfigError(
                "scale.sizes must be a non-empty list of model shapes ({d_model, n_layers, ...} "
                f"or {{params: N}}), got {self.sizes!r}"
            )
        budgets = []
        for value in self.budgets:
            try:
                budgets.append(float(value))
            except (TypeError, ValueError):
                budgets.append(math.nan)
        if not budgets or not all(math.isfinite(b) and b > 0 for b in budgets):
            unit = "tokens" if self.mode == "grid" else "FLOPs"
            raise ConfigError(
                f"scale.budgets must be a non-empty list of positive numbers ({unit}), "
                f"got {self.budgets!r}"
            )
        self.budgets = budgets
        for name, low in (("evals", 1), ("d_multiple", 1), ("n_boot", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"scale.{name} must be >= {low}, got {getattr(self, name)}")
        try:
            validate_holdout(self.holdout_value)
        except ConfigError as err:
            raise ConfigError(f"scale.holdout: {err}") from None
        configs = len(self.sizes) * len(self.budgets)
        if isinstance(self.holdout_value, int) and self.holdout_value >= configs:
            raise ConfigError(
                f"scale.holdout: a count must leave runs to fit, below sizes x budgets "
                f"({configs}), got {self.holdout_value}"
            )

    @property
    def holdout_value(self) -> float | int:
        """`holdout` as the fits take it: a whole number >= 1 is a count, else a fraction."""
        value = self.holdout
        return int(value) if float(value).is_integer() and value >= 1 else float(value)

    @property
    def unit(self) -> str:
        return "tokens" if self.mode == "grid" else "flops"


@dataclass
class ScaleConfig:
    """A comparison and its ladder."""

    compare: CompareConfig
    scale: ScaleSection

    @property
    def name(self) -> str:
        return self.compare.name


@dataclass
class Rung:
    """One run of the ladder and what the fits need to know about it: its backbone (the
    comparison's grid point without the task), task, size, budget, non-embedding parameters
    N, tokens and FLOPs per training step (FLOPs as `scale.flops` counts them)."""

    run: Run
    backbone: str
    task: str
    size: dict[str, Any]
    budget: float
    params: int
    tokens_per_step: int
    flops_per_step: float

    @property
    def steps(self) -> int:
        return self.run.config.train.steps


def load_scale_config(source: str | os.PathLike[str]) -> ScaleConfig:
    """A ladder from a YAML path or a built-in experiment name (e.g. `scaling-quickstart`)."""
    path = resolve_experiment(source)
    data = read_config_mapping(path)
    section = data.pop("scale", None)
    if section is None:
        raise ConfigError(
            f"{path.name}: no scale section; a ladder is a comparison config with "
            "scale: {sizes, budgets, mode}"
        )
    compare = from_dict(CompareConfig, data)
    scale = from_dict(ScaleSection, section, "scale.")
    return ScaleConfig(compare, scale)


def dump_scale(config: ScaleConfig) -> str:
    return yaml.safe_dump(
        {**to_dict(config.compare), "scale": to_dict(config.scale)}, sort_keys=False
    )


@dataclass
class _Measured:
    params: int
    tokens_per_step: int
    flops_per_step: float


class _Probe:
    """Builds a grid point's task once, then counts a model shape's parameters and per-step
    work on the meta device (nothing allocated), or on the CPU for a model that cannot be
    built or counted there (one that reads a tensor's value, e.g. s4, s7 or a DEQ)."""

    def __init__(self, experiment: ExperimentConfig) -> None:
        self.experiment = experiment
        task = build_task(experiment)
        objective = build_objective(
            experiment.objective.name, task.vocab_size, **experiment.objective.options
        )
        self.task, self.objective = task, objective
        self.vocab_size = objective.model_vocab_size(task.vocab_size)
        self.seq_len = task.seq_len
        tc = experiment.train
        self.tokens_per_step = int(
            task.batch("train", 0, tc.batch_size, seed=tc.seed).tokens.numel()
        )

    def measure(self, shape: dict[str, Any], flops: str) -> _Measured:
        experiment = _with_shape(self.experiment, shape)
        model_config = model_config_for(experiment.model, self.task, self.objective)
        try:
            with torch.device("meta"):
                return self._count(build_model(model_config), flops)
        except (RuntimeError, NotImplementedError):
            pass
        try:
            return self._count(build_model(model_config), flops)
        except (RuntimeError, NotImplementedError, ValueError) as err:
            raise ConfigError(f"cannot build model {shape}: {err}") from None

    def _count(self, model: Model, flops: str) -> _Measured:
        params = model.num_params(embeddings=False)
        if flops == "analytic":
            per_step = 3.0 * model.flops_per_token(self.seq_len) * self.tokens_per_step
        else:
            per_step = FLOPS_PER_PARAM_TOKEN * params * self.tokens_per_step
        return _Measured(params, self.tokens_per_step, per_step)

    def resolve(self, size: dict[str, Any], multiple: int) -> dict[str, Any]:
        """A size as model keys: `{params: N, ...}` gets the d_model nearest N (see the
        module docstring)."""
        if "params" not in size:
            return dict(size)
        target = size["params"]
        if isinstance(target, bool) or not isinstance(target, int | float) or target <= 0:
            raise ConfigError(f"scale.sizes: params must be a positive number, got {target!r}")
        rest = {k: v for k, v in size.items() if k not in ("params", "d_model")}
        heads = rest.get("n_heads", self.experiment.model.n_heads)
        step = math.lcm(multiple, heads)

        def count(d: int) -> int:
            shape = {**rest, "d_model": d}
            experiment = _with_shape(self.experiment, shape)
            model = model_config_for(experiment.model, self.task, self.objective)
            total = count_parameters(model)  # one block per kind: cheaper than a model
            if total is None:
                return self.measure(shape, "6nd").params
            return total - self.vocab_size * d

        high = step
        while count(high) < target and high < MAX_D_MODEL:
            high *= 2
        low = step
        while high - low > step:  # count grows with d_model: bisect on multiples of `step`
            mid = (low + high) // (2 * step) * step
            low, high = (mid, high) if count(mid) < target else (low, mid)
        best = min((low, high), key=lambda d: abs(math.log(count(d) / target)))
        return {**rest, "d_model": best}


def _with_shape(experiment: ExperimentConfig, shape: dict[str, Any]) -> ExperimentConfig:
    data = apply_overrides(to_dict(experiment), {f"model.{k}": v for k, v in shape.items()})
    return from_dict(ExperimentConfig, data)


def steps_for(budget: float, mode: str, measured: _Measured) -> int:
    """Training steps that meet `budget` (tokens in grid mode, FLOPs in isoflop mode) within
    half a step, at least one."""
    per_step = measured.tokens_per_step if mode == "grid" else measured.flops_per_step
    return max(1, round(budget / per_step))


def expand_ladder(config: ScaleConfig) -> list[Rung]:
    """Every run of the ladder, each config validated (and its size resolved) before anything
    trains."""
    scale = config.scale
    runs = expand(config.compare)
    by_point: dict[str, list[Run]] = {}
    for run in runs:
        by_point.setdefault(run.point_id, []).append(run)
    rungs = []
    for point_runs in by_point.values():
        first = point_runs[0]
        probe = _Probe(first.config)
        task = point_labels(first.point).get("task", first.config.task.name)
        backbone = _backbone(first)
        for size in scale.sizes:
            try:
                shape = probe.resolve(size, scale.d_multiple)
                measured = probe.measure(shape, scale.flops)
            except SeqlabError as err:
                raise ConfigError(f"scale.sizes entry {size}: {err}") from None
            for budget in scale.budgets:
                steps = steps_for(budget, scale.mode, measured)
                overrides = {
                    **{f"model.{k}": v for k, v in shape.items()},
                    "train.steps": steps,
                    "train.eval_every": max(1, steps // scale.evals),
                }
                point = {**first.point, "size": shape, scale.unit: budget}
                for run in point_runs:
                    data = apply_overrides(to_dict(run.config), overrides)
                    try:
                        cell = from_dict(ExperimentConfig, data)
                    except SeqlabError as err:
                        raise ConfigError(f"scale.sizes entry {size}: {err}") from None
                    rungs.append(
                        Rung(
                            Run(point, run.lr, run.seed, cell),
                            backbone,
                            task,
                            shape,
                            budget,
                            measured.params,
                            measured.tokens_per_step,
                            measured.flops_per_step,
                        )
                    )
    return rungs


def _backbone(run: Run) -> str:
    """The backbone label of a grid point: its mixer(s) when the grid varies only the model,
    else every grid value but the task."""
    others = {k: v for k, v in run.point.items() if k != "task"}
    if all(k.startswith("model.") for k in others):
        return describe_backbone(to_dict(run.config))
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point_labels(others).items())


def size_label(size: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in size.items())


def out_dir(config: ScaleConfig, out: str | os.PathLike[str] | None) -> Path:
    return Path(out) if out else Path("runs") / config.name
