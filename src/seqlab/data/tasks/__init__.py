"""Tasks, one or a few per module; the registry (`seqlab.registry.TASKS`) finds them by
importing every module of this package on first lookup."""

from seqlab.data.tasks.base import SPLITS, Task, build_task, model_config_for

__all__ = ["SPLITS", "Task", "build_task", "model_config_for"]
