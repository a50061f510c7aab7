"""Files on disk: atomic writes, JSON, safetensors with clear corruption errors, checksums.

Temporary files of atomic writes are named `.NAME.XXXX.tmp` beside their target, so a writer
killed mid-write leaves only such files, which `remove_stale_temporaries` clears.

A leaf module: it imports nothing of seqlab but its error classes, so any module may use it.
No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqlab.errors import CheckpointError

PathLike = str | os.PathLike[str]


def atomic_replace(path: PathLike, write: Any) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, and rename it over
    `path`: readers see the old or the new content, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text so that `path` holds either the old or the new content, never a torn file."""
    atomic_replace(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_tensors(
    tensors: dict[str, torch.Tensor], path: PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Atomically write a safetensors file (tensors made contiguous and unshared)."""
    plain = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    atomic_replace(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_tensors(path: PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or damaged file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({err})") from None


def read_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt JSON ({err})") from None


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: PathLike) -> None:
    """Make a rename inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [
        name
        for name, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _canonical_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SELF_CHECKSUM = "self_sha256"


def write_checked_json(path: PathLike, data: dict[str, Any]) -> None:
    """Atomically write a JSON object that carries the sha256 of its own content."""
    payload = {k: v for k, v in data.items() if k != SELF_CHECKSUM}
    atomic_write_json(path, {**payload, SELF_CHECKSUM: _canonical_sha256(payload)})


def read_checked_json(path: PathLike) -> dict[str, Any]:
    """Read a file written by `write_checked_json`; a missing or wrong self-checksum raises
    CheckpointError."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    claimed = data.pop(SELF_CHECKSUM, None)
    if not claimed:
        raise CheckpointError(f"{path}: no {SELF_CHECKSUM} field, the file cannot be verified")
    if _canonical_sha256(data) != claimed:
        raise CheckpointError(f"{path}: checksum mismatch, the file was edited or is corrupt")
    return data


def checksum_path(path: PathLike) -> Path:
    """Where the checksum of `path` is kept: `path.sha256`, in `sha256sum` format."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checksum(path: PathLike) -> None:
    """Record the sha256 of file `path` in `path.sha256` (`sha256sum -c` reads it)."""
    path = Path(path)
    atomic_write_text(checksum_path(path), f"{sha256_file(path)}  {path.name}\n")


def verify_checksum(path: PathLike) -> None:
    """Check file `path` against `path.sha256`; a missing, empty or different checksum raises
    CheckpointError."""
    path, record = Path(path), checksum_path(path)
    if not record.is_file():
        raise CheckpointError(
            f"{record}: file not found, {path.name} cannot be verified (a file written before "
            f"checksums: if you trust it, `sha256sum {path.name} > {record.name}` in its folder)"
        )
    try:
        expected = record.read_text(encoding="ascii").split()
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{record}: unreadable checksum ({err})") from None
    if not expected:
        raise CheckpointError(f"{record}: empty checksum, {path.name} cannot be verified")
    if sha256_file(path) != expected[0]:
        raise CheckpointError(f"{path}: checksum mismatch, the file is truncated or corrupt")


def remove_stale_temporaries(directory: PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the `.NAME.XXXX.tmp` files that killed atomic writes of the files `names` left
    in `directory` (nothing else: a user's own dotfiles stay). Only safe while no other
    process writes there (a run holds its lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(
        r"\.(?:" + "|".join(re.escape(name) for name in names) + r")\.[A-Za-z0-9_]+\.tmp"
    )
    stale = [p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
