"""Shared test utilities: tiny corpora, tiny configs, running the CLI in a subprocess, a few
training steps on a task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

if TYPE_CHECKING:
    from seqlab.data.tasks.base import Task
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(directory: Path, files: int = 12, lines: int = 60) -> Path:
    """A small deterministic folder of Python-like text files."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = "".join(
            f"def function_{i}_{j}(x):\n    return x * {j} + {i}  # line {j}\n"
            for j in range(lines)
        )
        (directory / f"module_{i:02d}.py").write_text(body)
    return directory


def tiny_config(corpus: Path, cache: Path, **sections: dict) -> dict:
    config = {
        "model": {"mixer": "attention", "d_model": 32, "n_layers": 2, "n_heads": 2},
        "objective": {"name": "ar"},
        "task": {"name": "text"},
        "data": {"corpus": "path", "path": str(corpus), "seq_len": 32, "cache_dir": str(cache)},
        "train": {
            "steps": 20,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup": 2,
            "eval_every": 10,
            "eval_tokens": 512,
            "checkpoint_every": 5,
            "log_every": 1,
            "threads": 1,
        },
    }
    for name, values in sections.items():
        config[name].update(values)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(
    *args: str, check: bool = False, timeout: float = 300, **popen
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "seqlab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **popen,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"seqlab {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def train_steps(
    model: Model, objective: Objective, task: Task, steps: int, batch_size: int, lr: float
) -> None:
    """`steps` AdamW steps (learning rate `lr`) of `objective.loss` on `task`'s training
    batches 0 .. steps − 1 of `batch_size` rows, seed 0."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss, _ = objective.loss(model, task.batch("train", step, batch_size, seed=0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
