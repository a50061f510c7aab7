"""Tasks; importing this package registers them all."""

from seqlab.data.tasks import (  # noqa: F401
    copying,
    formal,
    listops,
    mqar,
    regbench,
    sort,
    state_tracking,
    text,
)
from seqlab.data.tasks.base import SPLITS, Task, build_task

__all__ = ["SPLITS", "Task", "build_task"]
