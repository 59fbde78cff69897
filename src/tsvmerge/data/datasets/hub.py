"""Datasets written by ``tsvmerge download data``: ``save_to_disk`` copies of hub mirrors under ``<location>/hub``.

Layout: ``<location>/hub/<Name>/<split>/`` (one ``datasets`` copy per split: train, test, and val where the dataset
has its own validation split) and ``<location>/hub/<Name>/download.json``, written last, which makes the copy
complete. It records the image and label columns, our raw class list (the names our torchvision / ImageFolder
loaders would expose, in their order) and the map from the mirror's label ids to ours, so that labels, class names
and splits are those of the published layouts (docs/data.md). Where a complete copy exists it is read instead of the
published layout: :func:`with_hub_copy` wraps each benchmark dataset's source.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..transforms import Chain, EMNISTOrientation, Transform
from .base import DatasetSource, Split

HUB_DIR = "hub"
MARKER = "download.json"


def hub_folder(root: Path, name: str) -> Path:
    """Where the downloaded copy of dataset ``name`` lives under data location ``root``."""
    return root / HUB_DIR / name


def read_marker(root: Path, name: str) -> dict[str, Any] | None:
    """The completion record of ``name``'s downloaded copy, or None when there is no complete copy."""
    path = hub_folder(root, name) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class HubSplit(Dataset):
    """One split of a downloaded copy: ``(transform(PIL image), label)`` with labels in our class order."""

    def __init__(self, table: Any, meta: dict[str, Any], transform: Transform | None = None) -> None:
        self.table = table
        self.image_column = meta["image_column"]
        self.label_column = meta["label_column"]
        self.classes: list[str] = list(meta["classes"])
        self.label_map: list[int] | None = meta.get("label_map")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[object, int]:
        row = self.table[int(index)]
        image = decode_image(row[self.image_column])
        label = int(row[self.label_column])
        if self.label_map is not None:
            label = self.label_map[label]
        return (self.transform(image) if self.transform is not None else image), label


def decode_image(value: Any) -> Image.Image:
    """A PIL image from what a ``datasets`` column holds: a decoded image, ``{"bytes": …}`` or raw bytes."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        else:
            return Image.open(value["path"])
    return Image.open(io.BytesIO(value))


def with_hub_copy(source: DatasetSource) -> DatasetSource:
    """``source``, reading ``<location>/hub/<Name>`` instead of the published layout wherever a complete copy is."""

    def paths(root: Path, split: Split) -> list[Path]:
        if read_marker(root, source.name) is None:
            return list(source.paths(root, split))
        return [hub_folder(root, source.name) / split]

    def load(root: Path, split: Split, transform: Transform) -> Dataset:
        meta = read_marker(root, source.name)
        if meta is None:
            return source.load(root, split, transform)
        import datasets

        table = datasets.load_from_disk(str(hub_folder(root, source.name) / split))
        if meta.get("transposed"):
            # As the torchvision EMNIST loader: the orientation fix runs after preprocessing.
            transform = Chain(transform, EMNISTOrientation())
        return HubSplit(table, meta, transform)

    hint = (f"run `tsvmerge download data --datasets {source.name} --to {{location}}` (a copy from its hub mirror, "
            f"docs/data.md), or {source.hint}")
    return replace(source, paths=paths, load=load, hint=hint)
