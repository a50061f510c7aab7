"""A Slurm array launcher for sweeps, through `submitit` (an optional dependency: the
`slurm` extra).

`seqlab compare CONFIG --slurm [PARTITION]` submits one array job of N tasks; task I runs
`seqlab compare CONFIG --shard I/N --out OUT` (`seqlab scale` likewise), each writing its
runs into the shared output directory. When the array has finished, `seqlab compare CONFIG
--out OUT --collect` writes the leaderboard. The job's settings come from the comparison's
optional `slurm:` section (the keys of `SlurmConfig`), `--slurm PARTITION` overriding its
partition and `--shards N` its task count:

    slurm:
      partition: gpu
      shards: 8            # array tasks (default: one per run)
      time_min: 240        # per task
      gpus_per_task: 1
      cpus_per_task: 8
      mem_gb: 32
      max_parallel: 4      # tasks running at once (default: all)
      account: null
      setup: ["source .venv/bin/activate"]   # shell lines before each task
      additional: {qos: high}                # further sbatch options

The section is read only by the launcher: a comparison with one still runs locally unless
`--slurm` is given. Job scripts and logs go to `OUT/slurm/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqlab.config import from_dict
from seqlab.errors import ConfigError, SeqlabError

SUBMITIT_NEEDED = "the Slurm launcher needs submitit (pip install 'seqlab[slurm]')"


@dataclass
class SlurmConfig:
    """The array job of `--slurm`.

    Keys:
        partition: the Slurm partition (null: the cluster's default)
        shards: array tasks N, each running shard I/N (null: one per run)
        time_min: time limit of each task in minutes
        gpus_per_task: GPUs of each task
        cpus_per_task: CPU cores of each task
        mem_gb: memory of each task in GB (null: the partition's default)
        max_parallel: tasks running at once (null: all)
        account: the account charged (null: the user's default)
        setup: shell lines run before each task (activate an environment, load modules)
        additional: further sbatch options, name -> value
    """

    partition: str | None = None
    shards: int | None = None
    time_min: int = 240
    gpus_per_task: int = 0
    cpus_per_task: int = 4
    mem_gb: float | None = None
    max_parallel: int | None = None
    account: str | None = None
    setup: list[str] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("shards", "time_min", "cpus_per_task", "max_parallel"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"slurm.{name} must be >= 1, got {value}")
        if self.gpus_per_task < 0:
            raise ConfigError(f"slurm.gpus_per_task must be >= 0, got {self.gpus_per_task}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"slurm.mem_gb must be positive, got {self.mem_gb}")


def slurm_config(
    section: dict[str, Any] | None, partition: str | None = None, shards: int | None = None
) -> SlurmConfig:
    """A comparison's `slurm:` section, with the command line's partition and task count."""
    config = from_dict(SlurmConfig, section, "slurm.")
    if partition:
        config.partition = partition
    if shards is not None:
        config.shards = shards
    return config


def array_parameters(config: SlurmConfig, name: str, tasks: int) -> dict[str, Any]:
    """The parameters of `submitit.AutoExecutor.update_parameters` for an array of `tasks`
    one-process tasks."""
    parameters: dict[str, Any] = {
        "slurm_job_name": name,
        "slurm_time": config.time_min,
        "slurm_nodes": 1,
        "slurm_ntasks_per_node": 1,
        "slurm_cpus_per_task": config.cpus_per_task,
        "slurm_array_parallelism": min(config.max_parallel or tasks, tasks),
        "slurm_setup": list(config.setup),
        "slurm_additional_parameters": dict(config.additional),
    }
    optional = {
        "slurm_partition": config.partition,
        "slurm_gpus_per_task": config.gpus_per_task or None,
        "slurm_mem": None if config.mem_gb is None else f"{int(config.mem_gb * 1024)}M",
        "slurm_account": config.account,
    }
    parameters.update({k: v for k, v in optional.items() if v is not None})
    return parameters


def shard_commands(
    command: str, experiment: str | os.PathLike[str], out: str | os.PathLike[str], count: int
) -> list[list[str]]:
    """The argument lists of the array's tasks: `seqlab COMMAND CONFIG --shard I/N --out OUT`
    with absolute paths (a built-in experiment name stays a name)."""
    source = Path(experiment)
    config = str(source.resolve()) if source.exists() else str(experiment)
    out = str(Path(out).resolve())
    return [[command, config, "--shard", f"{i}/{count}", "--out", out] for i in range(count)]


def run_task(argv: list[str]) -> int:
    """One array task: `seqlab ARGV` in this process; a non-zero exit fails the task."""
    from seqlab.cli import main

    code = main(argv)
    if code != 0:
        raise SeqlabError(f"seqlab {' '.join(argv)} exited with {code}")
    return code


def launch(
    command: str,
    experiment: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: SlurmConfig,
    runs: int,
    *,
    name: str = "seqlab",
    cluster: str | None = "slurm",
) -> list[Any]:
    """Submit the array job of `runs` runs split into `config.shards` shards (one per run by
    default); returns submitit's jobs. `cluster` is submitit's ("debug" runs the tasks in
    this process when their results are asked for: for tests)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(SUBMITIT_NEEDED) from None
    count = min(config.shards or runs, runs)
    out = Path(out)
    try:
        executor = submitit.AutoExecutor(folder=out / "slurm" / "%A_%a", cluster=cluster)
    except RuntimeError as err:  # submitit's "no srun here"
        raise ConfigError(f"--slurm: {err}") from None
    executor.update_parameters(**array_parameters(config, name, count))
    return executor.map_array(run_task, shard_commands(command, experiment, out, count))
