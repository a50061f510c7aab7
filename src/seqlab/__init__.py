"""seqlab: any sequence backbone x any generation paradigm x any decoder, compared fairly.

Public API: build_model, save, load, generate, list_mixers, list_objectives, list_tasks,
list_samplers, list_baselines, list_presets, and the config dataclasses.

The config and registry names are imported eagerly (they are light); the model, files and
sampling names on first use (PEP 562), so that `import seqlab.config` stays free of torch
models.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from seqlab.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    TaskConfig,
    TrainConfig,
    list_presets,
    load_config,
)
from seqlab.registry import BASELINES, MIXERS, OBJECTIVES, SAMPLERS, TASKS

try:
    __version__ = importlib.metadata.version("seqlab")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "Generation",
    "ModelConfig",
    "ObjectiveConfig",
    "TaskConfig",
    "TrainConfig",
    "build_model",
    "generate",
    "list_baselines",
    "list_mixers",
    "list_objectives",
    "list_presets",
    "list_samplers",
    "list_tasks",
    "load",
    "load_config",
    "save",
]

_LAZY = {
    "build_model": "seqlab.model",
    "load": "seqlab.io",
    "save": "seqlab.io",
    "generate": "seqlab.sampling",
    "Generation": "seqlab.sampling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seqlab' has no attribute {name!r}")


def list_mixers() -> list[str]:
    return MIXERS.names()


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def list_tasks() -> list[str]:
    return TASKS.names()


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def list_baselines() -> list[str]:
    return BASELINES.names()
