"""The errors a missing or incomplete benchmark dataset raises."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..utils.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A benchmark dataset is not (completely) present under ``data_location``.

    Subclasses FileNotFoundError so callers that already catch missing files keep working; the message names the
    expected paths and says how to prepare them, because most of these datasets cannot be downloaded automatically.
    """


class DatasetTooSmallError(DatasetNotFoundError, ValueError):
    """A dataset has too few training images to carve out its validation split: most likely an incomplete copy.

    Also a ValueError, which the split raised for this before.
    """


def missing_dataset(name: str, location: Path, missing: Iterable[Path | str], hint: str) -> DatasetNotFoundError:
    """Build the error for ``name`` whose ``missing`` paths are absent under ``location``."""
    lines = "\n".join(f"  - {p}" for p in missing)
    return DatasetNotFoundError(
        f"Dataset {name} not found under data_location '{location}'. Missing:\n{lines}\n"
        f"How to prepare it: {hint.replace('{location}', str(location))}"
    )


def require(name: str, location: Path, paths: Iterable[Path], hint: str) -> None:
    """Raise one DatasetNotFoundError listing every path in ``paths`` that does not exist."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise missing_dataset(name, location, missing, hint)
