"""FER2013: the Hugging Face dataset ``Jeneral/fer-2013`` (``img_bytes`` PNG bytes, ``labels``), read offline.

Looked up, in order, without any network access:
1. ``<location>/fer2013``: a local copy written by
   ``datasets.load_dataset("Jeneral/fer-2013").save_to_disk("<location>/fer2013")`` (read with ``load_from_disk``);
2. the arrow files ``datasets.load_dataset("Jeneral/fer-2013")`` left in a Hugging Face datasets cache
   (``<location>`` used as ``cache_dir``, then the default ``HF_DATASETS_CACHE``), newest copy first.
``datasets.load_dataset`` itself is not called: it contacts the hub even with ``local_files_only``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..transforms import Transform
from .base import DatasetSource, Split

_LOCAL = "fer2013"
_CACHE_NAME = "Jeneral___fer-2013"


class FER2013Split(Dataset):
    """One split of the Hugging Face table, decoded to PIL images on access."""

    def __init__(self, table: Any, transform: Transform | None = None) -> None:
        self.table = table
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[object, int]:
        row = self.table[int(index)]
        image = _decode(row["img_bytes"])
        return (self.transform(image) if self.transform is not None else image), int(row["labels"])


def _decode(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # a datasets Image feature stored without decoding
        value = value["bytes"]
    return Image.open(io.BytesIO(value))


def _cache_files(root: Path, split: Split) -> list[Path]:
    """Arrow files of ``split`` in the newest cached copy of the dataset, or [] if none is cached."""
    from datasets import config

    for cache in (root, Path(config.HF_DATASETS_CACHE)):
        copies = sorted(cache.glob(f"{_CACHE_NAME}/*/*/*/"), key=lambda p: p.stat().st_mtime, reverse=True)
        for copy in copies:
            files = sorted(copy.glob(f"*-{split}.arrow")) + sorted(copy.glob(f"*-{split}-*-of-*.arrow"))
            if files:
                return files
    return []


def _paths(root: Path, split: Split) -> list[Path]:
    local = root / _LOCAL / split
    if local.exists():
        return [local]
    return _cache_files(root, split) or [local]


def _load(root: Path, split: Split, transform: Transform) -> Dataset:
    import datasets

    local = root / _LOCAL
    if (local / split).exists():
        table = datasets.load_from_disk(str(local / split))
    else:
        table = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in _cache_files(root, split)])
    return FER2013Split(table, transform)


SOURCE = DatasetSource(
    "FER2013", _paths, _load,
    "on a machine with network access run python -c \"import datasets; "
    "datasets.load_dataset('Jeneral/fer-2013').save_to_disk('{location}/fer2013')\" "
    "(or keep that dataset in the Hugging Face datasets cache).",
)
