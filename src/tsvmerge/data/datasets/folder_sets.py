"""ImageFolder datasets prepared by hand (SPEC §5): DTD, EuroSAT, SUN397.

Class index = sorted folder order (ImageFolder); the raw folder names become class names through the json's
``classname_rules``. DTD and SUN397 use their ``val`` folder as the *test* split, as the published code does.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from ..transforms import Transform
from .base import DatasetSource, Split


def _image_folder(name: str, subdir: str, folders: dict[str, str], hint: str, has_val: bool = False) -> DatasetSource:
    def paths(root: Path, split: Split) -> list[Path]:
        return [root / subdir / folders[split]]

    def load(root: Path, split: Split, transform: Transform) -> Dataset:
        return ImageFolder(str(root / subdir / folders[split]), transform=transform, target_transform=int)

    return DatasetSource(name, paths, load, hint, has_val=has_val)


SOURCES: tuple[DatasetSource, ...] = (
    _image_folder(
        "DTD", "dtd", {"train": "train", "test": "val"},
        "from dtd-r1.0.1, merge its train and val parts into {location}/dtd/train/<class>/ and put its test part "
        "in {location}/dtd/val/<class>/ (this 'val' folder is the test split).",
    ),
    _image_folder(
        "EuroSAT", "EuroSAT_splits", {"train": "train", "val": "val", "test": "test"},
        "split EuroSAT.zip (RGB) at random 21,600 / 2,700 / 2,700 into "
        "{location}/EuroSAT_splits/train|val|test/<class>/.",
        has_val=True,
    ),
    _image_folder(
        "SUN397", "sun397", {"train": "train", "test": "val"},
        "SUN397 from the Princeton archive (no longer officially downloadable), prepared as "
        "{location}/sun397/train/<class>/ and {location}/sun397/val/<class>/ (folder names carry a 2-character "
        "prefix, e.g. 'a_abbey'; 'val' is the test split).",
    ),
)
