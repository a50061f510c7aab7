"""The run directory: who may write it (an exclusive lock naming its holder) and what a new
training may do with what is already there.

`seqlab train --out DIR` trains into an empty or new directory; a directory that holds a run
(checkpoints, a summary) or a saved model is continued only with `resume` and replaced only
with `overwrite`. A run with neither checkpoint nor model holds nothing that a restart would
not reproduce exactly (every step is a pure function of seed and step), so it is restarted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from seqlab.data.tokenizers import TOKENIZER_FILE
from seqlab.errors import ConfigError, SeqlabError
from seqlab.files import checksum_path, remove_stale_temporaries
from seqlab.io import WEIGHTS
from seqlab.train.checkpoint import LATEST, checkpoint_root, remove_partial_checkpoints

LOCK_FILE = ".seqlab.lock"
# What a training writes into its directory; `overwrite` removes exactly these.
RUN_FILES = (
    "checkpoints",
    "tensorboard",
    "metrics.jsonl",
    "summary.json",
    "config.yaml",
    WEIGHTS,
    checksum_path(WEIGHTS).name,
    TOKENIZER_FILE,
)


class RunLock:
    """An exclusive `flock` on `DIR/.seqlab.lock`, which names its holder (pid and host).

    The operating system drops the lock when its holder dies, so a lock file left behind by
    a killed process is simply taken over.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise SeqlabError(
                    f"{self.path.parent}: cannot write the run directory ({err.strerror})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise SeqlabError(
                    f"{self.path.parent} is being written by another training ({holder}); wait "
                    "for it to end or choose another --out"
                ) from None
            if not self._is_current(fd):  # its holder released and unlinked it meanwhile
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            os.fsync(fd)
            self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode())
            return f"pid {holder['pid']} on host {holder['host']}"
        except (ValueError, KeyError, TypeError, OSError):
            return "holder unknown"


def held_work(out: Path) -> str | None:
    """What in `out` a new training would destroy: checkpoints, a summary or a saved model."""
    root = checkpoint_root(out)
    if root.is_dir() and any(root.iterdir()):
        return "checkpoints"
    for name in ("summary.json", WEIGHTS):
        if (out / name).exists():
            return name
    return None


def open_run_directory(out: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Check, create and lock the run directory `out`, clear what killed writers left, and
    apply the resume / overwrite contract. Returns the held lock."""
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
    if out.exists() and not out.is_dir():
        raise SeqlabError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SeqlabError(f"--out {out}: cannot create the directory ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SeqlabError(f"--out {out}: the directory is not writable")
    lock = RunLock(out).acquire()
    try:
        remove_partial_checkpoints(out)
        remove_stale_temporaries(out, RUN_FILES)
        remove_stale_temporaries(checkpoint_root(out), [LATEST])
        work = held_work(out)
        if work and not resume and not overwrite:
            raise SeqlabError(
                f"{out} already holds a training run or saved model ({work}); pass --resume to "
                "continue it, --overwrite to replace it, or choose another --out"
            )
        if work and overwrite:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock
