"""Metrics logs: `metrics.jsonl` always (one object per logged step), TensorBoard if installed,
and plain progress lines for output that is not a terminal."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parsed lines of a metrics file; a torn last line (a killed writer) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Appends one JSON object per logged step to `RUN/metrics.jsonl`."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        resume_step: int | None = None,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_line(record: dict[str, Any], total: int) -> str:
    """One plain line for a logged step: `step 10/200 loss 3.2100 lr 3.00e-03 ...`."""
    parts = [f"step {record['step']}/{total}"]
    for key, value in record.items():
        if key == "step" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if isinstance(value, int):
            parts.append(f"{key} {value}")
        elif key == "lr":
            parts.append(f"{key} {value:.2e}")
        else:
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)
