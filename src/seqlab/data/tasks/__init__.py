"""Tasks; importing this package registers them all."""

from seqlab.data.tasks import text  # noqa: F401
from seqlab.data.tasks.base import SPLITS, Task, build_task

__all__ = ["SPLITS", "Task", "build_task"]
