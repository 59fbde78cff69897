"""Stanford Cars: torchvision's StanfordCars reads exactly the published layout (MATLAB annotations, SPEC §5)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import StanfordCars

from ..transforms import Transform
from .base import DatasetSource, Split


def _paths(root: Path, split: Split) -> list[Path]:
    base = root / "stanford_cars"
    if split == "train":
        return [base / "devkit" / "cars_meta.mat", base / "devkit" / "cars_train_annos.mat", base / "cars_train"]
    return [base / "devkit" / "cars_meta.mat", base / "cars_test_annos_withlabels.mat", base / "cars_test"]


def _load(root: Path, split: Split, transform: Transform) -> Dataset:
    # Labels in the .mat files are 1-based; StanfordCars subtracts 1. Class names: devkit/cars_meta.mat class_names.
    return StanfordCars(str(root), split=split, transform=transform, target_transform=int)


SOURCE = DatasetSource(
    "Cars", _paths, _load,
    "the original Stanford URLs are dead: get the images (cars_train/, cars_test/) from a community mirror, plus the "
    "devkit (cars_meta.mat, cars_train_annos.mat) and cars_test_annos_withlabels.mat, into {location}/stanford_cars/.",
)
