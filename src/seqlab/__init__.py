"""seqlab: any sequence backbone x any generation paradigm x any decoder, compared fairly.

Public API: build_model, save, load, generate, list_mixers, list_objectives, list_tasks,
list_samplers, list_presets, and the config dataclasses.
"""

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
from seqlab.io import load, save
from seqlab.model import build_model
from seqlab.registry import MIXERS, OBJECTIVES, SAMPLERS, TASKS
from seqlab.sampling import Generation, generate

__version__ = "0.1.0"

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
    "list_mixers",
    "list_objectives",
    "list_presets",
    "list_samplers",
    "list_tasks",
    "load",
    "load_config",
    "save",
]


def list_mixers() -> list[str]:
    return MIXERS.names()


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def list_tasks() -> list[str]:
    return TASKS.names()


def list_samplers() -> list[str]:
    return SAMPLERS.names()
