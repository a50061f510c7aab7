"""Training checkpoints: written atomically, verified by checksum, resumed exactly.

Layout of `RUN/checkpoints/`: one directory `step-XXXXXXXX/` per checkpoint holding
`model.safetensors`, `optimizer.safetensors` and `state.json` (step, optimizer
hyper-parameters, sha256 of each tensor file, and the sha256 of its own content), plus a file
`latest` naming the newest, which must be a `step-XXXXXXXX` directory of the run itself.
A checkpoint is built in `step-XXXXXXXX.tmp/` and renamed into place, then `latest` is
replaced atomically, so a run killed at any moment leaves the previous checkpoint intact.
A checkpoint whose weights hold a NaN or an infinity is never written, and pruning never
removes the checkpoint `latest` names.

A sharded checkpoint (train.strategy fsdp, `train/strategy.py`) has the same layout and
guarantees, with the files of `torch.distributed.checkpoint` (`.metadata` and one
`__R_0.distcp` per rank) in place of the two tensor files and `"format": "dcp"` in
`state.json`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqlab.errors import CheckpointError
from seqlab.files import (
    atomic_write_text,
    fsync_dir,
    load_tensors,
    non_finite_tensors,
    read_checked_json,
    save_tensors,
    sha256_file,
    write_checked_json,
)

STEP_NAME = re.compile(r"step-(\d{8})")
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
SHARDED = "dcp"  # state.json "format" of a sharded (train.strategy fsdp) checkpoint
SHARDED_FILES = (".metadata",)  # torch.distributed.checkpoint's index of the shard files

LATEST = "latest"  # the file naming the newest checkpoint directory


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    extra: dict[str, Any]


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model_tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` checkpoints (the new
    one always among them). Weights holding a NaN or an infinity raise CheckpointError and
    nothing is written."""
    bad = non_finite_tensors(model_tensors)
    if bad:
        raise CheckpointError(
            f"checkpoint step {step} not written: {bad[0]} holds non-finite values"
        )
    tmp = begin_checkpoint(run_dir, step)
    opt_tensors, opt_meta = flatten_optimizer(optimizer_state)
    save_tensors(model_tensors, tmp / "model.safetensors")
    save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    return finish_checkpoint(run_dir, step, {"optimizer": opt_meta, "extra": extra}, keep)


def begin_checkpoint(run_dir: str | os.PathLike[str], step: int) -> Path:
    """An empty `step-XXXXXXXX.tmp/` directory to build checkpoint `step` in."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int
) -> Path:
    """Seal the built `step-XXXXXXXX.tmp/`: write `state.json` (`state`, the step and the
    sha256 of every file in it), rename it into place, point `latest` at it and keep only the
    newest `keep` checkpoints."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f"{final.name}.tmp"
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    write_checked_json(tmp / "state.json", {**state, "step": step, "sha256": files})
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    older = sorted(p for p in root.glob("step-????????") if p.is_dir() and p != final)
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(run_dir: str | os.PathLike[str]) -> None:
    """Delete the `step-XXXXXXXX.tmp/` directories of checkpoints whose writer was killed."""
    for partial in checkpoint_root(run_dir).glob("step-*.tmp"):
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint directory, or None if the run has none. A `latest`
    that is unreadable or names anything but a `step-XXXXXXXX` directory of this run raises
    CheckpointError."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        name = pointer.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(
            f"{pointer}: unreadable or corrupt, expected the name of a step-XXXXXXXX checkpoint"
        ) from None
    if not STEP_NAME.fullmatch(name):
        raise CheckpointError(
            f"{pointer} names {name[:60]!r}, not a step-XXXXXXXX checkpoint directory of {root}"
        )
    path = root / name
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing")
    if path.is_symlink() or path.resolve().parent != root.resolve():
        raise CheckpointError(f"{pointer} names {path.name}, which lies outside {root}")
    return path


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The `state.json` of checkpoint directory `path`, once it and every file its checksum
    table lists are verified; damage raises CheckpointError."""
    path = Path(path)
    state = read_checked_json(path / "state.json")
    table = state.get("sha256")
    if not isinstance(table, dict) or not table:
        raise CheckpointError(
            f"{path / 'state.json'}: no checksum table (sha256), the checkpoint cannot be verified"
        )
    required = SHARDED_FILES if state.get("format") == SHARDED else TENSOR_FILES
    for name in sorted(set(table) | set(required)):
        file = path / name
        if not table.get(name):
            raise CheckpointError(f"{path / 'state.json'}: no checksum of {name}")
        if not file.is_file():
            raise CheckpointError(f"{file}: file not found")
        if sha256_file(file) != table[name]:
            raise CheckpointError(f"{file}: checksum mismatch, the file is truncated or corrupt")
    named = STEP_NAME.fullmatch(path.name)
    if named and int(named.group(1)) != int(state["step"]):
        raise CheckpointError(f"{path / 'state.json'}: holds step {state['step']}, not {path.name}")
    return state


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint directory; damage raises CheckpointError."""
    path = Path(path)
    state = verify_checkpoint(path)
    if state.get("format") == SHARDED:
        raise CheckpointError(
            f"{path} is a sharded checkpoint of a train.strategy fsdp run; resume it with "
            "train.strategy: fsdp under torchrun"
        )
    model = load_tensors(path / "model.safetensors", device)
    optimizer = unflatten_optimizer(
        load_tensors(path / "optimizer.safetensors", device), state["optimizer"]
    )
    return Checkpoint(int(state["step"]), model, optimizer, state.get("extra", {}))
