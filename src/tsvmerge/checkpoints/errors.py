"""Errors about the content of checkpoint files; every message names the file and says what to do."""

from __future__ import annotations

import errno
import os
import pickle

from ..utils.errors import UserError

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointPermissionError",
    "CorruptCheckpointError",
    "NonFiniteCheckpointError",
    "permission_problem",
]


class CheckpointFormatError(UserError, ValueError):
    """The file is readable but does not hold a flat ``{name: tensor}`` state dict."""


class CheckpointMismatchError(UserError, ValueError):
    """Two checkpoints that must describe the same architecture have different keys or shapes."""


class CorruptCheckpointError(CheckpointFormatError, pickle.UnpicklingError):
    """The file cannot be read at all: empty, truncated, damaged, or not a checkpoint.

    Also a ``pickle.UnpicklingError``, which the loaders raised for such files before.
    """


class NonFiniteCheckpointError(CheckpointFormatError):
    """A checkpoint tensor holds NaN or infinite values; anything merged from it would be meaningless."""


class CheckpointPermissionError(UserError, PermissionError):
    """The file exists but this user may not read it; nothing is wrong with its content.

    A PermissionError (errno, filename set) that words its own one-line message, so that it is not taken for a
    damaged file, and callers catching OSError still see it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickled (between processes) as it was made
        return type(self), (self.filename,)

    def __str__(self) -> str:
        return (f"cannot read {self.filename!r}: permission denied (check its permissions: make it readable, or "
                "run as a user who may read it)")


def permission_problem(path: str | os.PathLike[str],
                       error: BaseException | None = None) -> CheckpointPermissionError | None:
    """The error to raise instead of ``error`` (a reader's failure on ``path``) when the real cause is that this
    user may not read ``path``; None when reading is allowed.

    Readers word that cause badly (safetensors reports "No such file or directory"), so the file is opened once
    more to ask the system.
    """
    if isinstance(error, CheckpointPermissionError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM):
        return CheckpointPermissionError(path)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return CheckpointPermissionError(path)
    except OSError:
        return None
    return None
