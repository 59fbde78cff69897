"""Errors about the content of checkpoint files; every message names the file and says what to do."""

from __future__ import annotations

import pickle

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "NonFiniteCheckpointError",
]


class CheckpointFormatError(ValueError):
    """The file is readable but does not hold a flat ``{name: tensor}`` state dict."""


class CheckpointMismatchError(ValueError):
    """Two checkpoints that must describe the same architecture have different keys or shapes."""


class CorruptCheckpointError(CheckpointFormatError, pickle.UnpicklingError):
    """The file cannot be read at all: empty, truncated, damaged, or not a checkpoint.

    Also a ``pickle.UnpicklingError``, which the loaders raised for such files before.
    """


class NonFiniteCheckpointError(CheckpointFormatError):
    """A checkpoint tensor holds NaN or infinite values; anything merged from it would be meaningless."""
