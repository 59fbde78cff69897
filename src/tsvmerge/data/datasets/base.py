"""What every dataset family module provides: a ``DatasetSource`` per dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from ..errors import missing_dataset, require
from ..transforms import Transform

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class DatasetSource:
    """How one benchmark dataset lies under ``data_location`` (SPEC §5) and how to load one of its splits.

    ``paths(root, split)`` lists what must exist for ``split`` (checked up front, so a missing dataset gives one error
    naming everything that is absent); ``load(root, split, transform)`` returns a Dataset yielding
    ``(transform(RGB PIL image), int label)`` with a raw ``.classes`` list where class names come from the files.
    ``has_val``: the dataset ships its own validation split, used for ``<Name>Val`` instead of a random 10%.
    ``hint`` says how to obtain the files (``{location}`` is replaced by the data location).
    """

    name: str
    paths: Callable[[Path, Split], Sequence[Path]]
    load: Callable[[Path, Split, Transform], Dataset]
    hint: str
    has_val: bool = False

    def check(self, root: Path, splits: Sequence[Split]) -> None:
        """Raise one DatasetNotFoundError naming every missing path of ``splits``."""
        paths = dict.fromkeys(p for split in splits for p in self.paths(root, split))
        require(self.name, root, paths, self.hint)

    def open(self, root: Path, split: Split, transform: Transform) -> Dataset:
        """Load ``split``; torchvision's integrity failures (files present but corrupt) become DatasetNotFoundError."""
        self.check(root, [split])
        try:
            return self.load(root, split, transform)
        except RuntimeError as err:
            if "not found" not in str(err).lower() and "corrupt" not in str(err).lower():
                raise
            raise missing_dataset(
                self.name, root, [f"(files present but rejected by torchvision: {err})"], self.hint
            ) from err
