"""RESISC45: class folders of .jpg images filtered by the torchgeo split lists ``resisc45-{train,val,test}.txt``.

Class index = sorted folder order over *all* class folders (as ImageFolder would), independent of the split list, so
labels agree across splits and with the 45 class names of the json.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from ..transforms import Transform
from .base import DatasetSource, Split

_IMAGES = Path("resisc45") / "NWPU-RESISC45"


class RESISC45Split(Dataset):
    """The images of one split list, in ImageFolder order (class, then walk order, then file name)."""

    def __init__(self, images_dir: Path, split_file: Path, transform: Transform | None = None) -> None:
        wanted = {line.strip() for line in split_file.read_text().splitlines() if line.strip()}
        self.classes = sorted(e.name for e in os.scandir(images_dir) if e.is_dir())
        self.samples: list[tuple[str, int]] = []
        for label, cls in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(images_dir / cls, followlinks=True)):
                self.samples += [(os.path.join(dirpath, f), label) for f in sorted(files) if f in wanted]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        path, label = self.samples[index]
        image = default_loader(path)
        return (self.transform(image) if self.transform is not None else image), label


def _split_file(root: Path, split: Split) -> Path:
    return root / "resisc45" / f"resisc45-{split}.txt"


def _paths(root: Path, split: Split) -> list[Path]:
    return [root / _IMAGES, _split_file(root, split)]


def _load(root: Path, split: Split, transform: Transform) -> Dataset:
    return RESISC45Split(root / _IMAGES, _split_file(root, split), transform)


SOURCE = DatasetSource(
    "RESISC45", _paths, _load,
    "extract NWPU-RESISC45.rar into {location}/resisc45/NWPU-RESISC45/<class>/ and put the split lists "
    "resisc45-train.txt, resisc45-val.txt, resisc45-test.txt from the torchgeo/resisc45 dataset on the Hugging Face "
    "hub into {location}/resisc45/.",
    has_val=True,
)
