"""Where each of the 20 benchmark datasets is fetched from: one maintained Hugging Face hub mirror per dataset.

Each :class:`Mirror` says which hub split feeds which of our splits (SPEC §5: ``train``, ``test`` and, for the
datasets that ship one, ``val``), which columns hold the image and the label, and how the mirror's class names map
onto the raw class list our loaders expose (folder names, torchvision ``.classes``), so that label indices and class
names are exactly those of the published layouts. ``EXPECTED_SIZES`` holds the published split sizes the final check
counts against. The choices and every known difference from the published protocol are documented in docs/data.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

ClassMapping = Literal["identity", "eurosat_folders", "sun397_folders", "title_words", "underscores"]


@dataclass(frozen=True)
class Mirror:
    """One dataset's hub mirror.

    ``splits`` maps our split (train / test / val) to the mirror's split name; ``derive_val``: the dataset has its
    own validation split in the published layout but the mirror does not, so ``val`` is carved out of the mirror's
    train split at download time (seeded 10%, the rule of SPEC §4) and ``train`` keeps the rest. ``data_files``
    restricts the files fetched per mirror split (repos that also ship corrupted copies of the test split).
    ``class_mapping`` turns the mirror's class names into our raw class names; ``order``: ``sorted`` where our loader
    sorts its classes (ImageFolder, Food101), ``mirror`` where the mirror's label order is the published one.
    ``verify_names``: the mirror's names, normalised, must equal the published class names (checked before writing).
    ``transposed``: images are stored transposed as in the raw EMNIST files (our loader rotates them back).
    ``approx_gb``: approximate disk use of the copy (for the free-space check).
    """

    name: str
    repo: str
    splits: Mapping[str, str]
    approx_gb: float
    config: str | None = None
    revision: str | None = None
    data_files: Mapping[str, str] | None = None
    image_column: str = "image"
    label_column: str = "label"
    class_mapping: ClassMapping = "identity"
    order: Literal["mirror", "sorted"] = "mirror"
    verify_names: bool = False
    derive_val: bool = False
    transposed: bool = False


def _tanganke_files(*splits: str) -> Mapping[str, str]:
    """tanganke/* repos converted to parquet keep one ``data/<split>-*.parquet`` set per split."""
    return MappingProxyType({s: f"data/{s}-*.parquet" for s in splits})


_TRAIN_TEST = MappingProxyType({"train": "train", "test": "test"})

MIRRORS: Mapping[str, Mirror] = MappingProxyType({m.name: m for m in (
    Mirror("Cars", "tanganke/stanford_cars", _TRAIN_TEST, 2.0, data_files=_tanganke_files("train", "test")),
    Mirror("DTD", "tanganke/dtd", _TRAIN_TEST, 0.7, order="sorted", verify_names=True),
    Mirror("EuroSAT", "tanganke/eurosat", _TRAIN_TEST, 0.1, data_files=_tanganke_files("train", "test"),
           class_mapping="eurosat_folders", order="sorted", verify_names=True, derive_val=True),
    Mirror("GTSRB", "tanganke/gtsrb", _TRAIN_TEST, 0.4, data_files=_tanganke_files("train", "test")),
    Mirror("MNIST", "ylecun/mnist", _TRAIN_TEST, 0.03, config="mnist", verify_names=True),
    Mirror("RESISC45", "timm/resisc45", MappingProxyType({"train": "train", "val": "validation", "test": "test"}),
           0.5, order="sorted", verify_names=True),
    Mirror("SVHN", "ufldl-stanford/svhn", _TRAIN_TEST, 0.4, config="cropped_digits", verify_names=True),
    Mirror("SUN397", "tanganke/sun397", _TRAIN_TEST, 15.0, class_mapping="sun397_folders", order="sorted",
           verify_names=True),
    Mirror("STL10", "tanganke/stl10", _TRAIN_TEST, 0.25),
    Mirror("OxfordIIITPet", "timm/oxford-iiit-pet", _TRAIN_TEST, 0.8, class_mapping="title_words"),
    Mirror("Flowers102", "dpdl-benchmark/oxford_flowers102", _TRAIN_TEST, 0.4),
    Mirror("CIFAR100", "tanganke/cifar100", _TRAIN_TEST, 0.15, class_mapping="underscores", order="sorted"),
    Mirror("PCAM", "1aurent/PatchCamelyon", _TRAIN_TEST, 8.0),
    Mirror("FER2013", "Jeneral/fer-2013", _TRAIN_TEST, 0.1, image_column="img_bytes", label_column="labels"),
    Mirror("CIFAR10", "tanganke/cifar10", _TRAIN_TEST, 0.15),
    Mirror("Food101", "ethz/food101", MappingProxyType({"train": "train", "test": "validation"}), 5.0,
           class_mapping="underscores", order="sorted"),
    Mirror("FashionMNIST", "zalando-datasets/fashion_mnist", _TRAIN_TEST, 0.04),
    Mirror("RenderedSST2", "nateraw/rendered-sst2", _TRAIN_TEST, 0.2, verify_names=True),
    Mirror("EMNIST", "ernestchu/emnist-digits", _TRAIN_TEST, 0.4, transposed=True),
    Mirror("KMNIST", "tanganke/kmnist", _TRAIN_TEST, 0.04, config="kmnist"),
)})

#: Published split sizes (SPEC §5 layouts: torchvision's splits, the prepared DTD / EuroSAT / SUN397 / RESISC45
#: splits, ``Jeneral/fer-2013``). ``val`` only where the dataset has its own validation split.
EXPECTED_SIZES: Mapping[str, Mapping[str, int]] = MappingProxyType({
    "Cars": {"train": 8144, "test": 8041},
    "DTD": {"train": 3760, "test": 1880},
    "EuroSAT": {"train": 21600, "val": 2700, "test": 2700},
    "GTSRB": {"train": 26640, "test": 12630},
    "MNIST": {"train": 60000, "test": 10000},
    "RESISC45": {"train": 18900, "val": 6300, "test": 6300},
    "SVHN": {"train": 73257, "test": 26032},
    "SUN397": {"train": 19850, "test": 19850},
    "STL10": {"train": 5000, "test": 8000},
    "OxfordIIITPet": {"train": 3680, "test": 3669},
    "Flowers102": {"train": 1020, "test": 6149},
    "CIFAR100": {"train": 50000, "test": 10000},
    "PCAM": {"train": 262144, "test": 32768},
    "FER2013": {"train": 28709, "test": 7178},
    "CIFAR10": {"train": 50000, "test": 10000},
    "Food101": {"train": 75750, "test": 25250},
    "FashionMNIST": {"train": 60000, "test": 10000},
    "RenderedSST2": {"train": 6920, "test": 1821},
    "EMNIST": {"train": 240000, "test": 40000},
    "KMNIST": {"train": 60000, "test": 10000},
})

#: EuroSAT's class folders (``EuroSAT_splits/<split>/<folder>``), in ImageFolder order.
EUROSAT_FOLDERS: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
    "Residential", "River", "SeaLake",
)

#: Number of classes of each dataset in the published experiments.
NUM_CLASSES: Mapping[str, int] = MappingProxyType({
    "Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "MNIST": 10, "RESISC45": 45, "SVHN": 10, "SUN397": 397,
    "STL10": 10, "OxfordIIITPet": 37, "Flowers102": 102, "CIFAR100": 100, "PCAM": 2, "FER2013": 7, "CIFAR10": 10,
    "Food101": 101, "FashionMNIST": 10, "RenderedSST2": 2, "EMNIST": 10, "KMNIST": 10,
})
