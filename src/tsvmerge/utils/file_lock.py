"""An exclusive lock around a read-modify-write of a shared file.

The single-task accuracy file (``results/single_task/<model>/nonlinear_ft_accuracies.json``) is updated by every
fine-tuning run and every ``eval_single_task.py`` run of a model. On a cluster these run at the same time (one Slurm
array job per task, docs/cluster.md); without a lock, two jobs read the same old file and the second rename loses the
first job's accuracies. The lock is a POSIX record lock (``fcntl.lockf``) on a hidden sidecar file, which also works
on NFS (through the lock manager) where ``flock`` may not; it is released when the block ends or the process dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["locked", "lock_path"]


def lock_path(path: str | Path) -> Path:
    """The sidecar lock file of ``path``: ``.<name>.lock`` next to it (hidden: report.py and globs skip it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` inside the block (waiting for other holders; the folder is created)."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
