"""GTSRB: torchvision's GTSRB layout (per-class .ppm training folders, Final_Test images + GT-final_test.csv)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import GTSRB

from ..transforms import Transform
from .base import DatasetSource, Split


def _paths(root: Path, split: Split) -> list[Path]:
    base = root / "gtsrb"
    if split == "train":
        return [base / "GTSRB" / "Training"]
    return [base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv"]


def _load(root: Path, split: Split, transform: Transform) -> Dataset:
    # Training labels = sorted class folder order (00000..00042); test labels = ClassId of the ';'-separated csv.
    return GTSRB(str(root), split=split, transform=transform, target_transform=int)


SOURCE = DatasetSource(
    "GTSRB", _paths, _load,
    "torchvision.datasets.GTSRB(root='{location}', split='train'|'test', download=True) fetches it.",
)
