"""Datasets read through torchvision's own classes and file layouts (SPEC §5), always with ``download=False``."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from ..transforms import Chain, EMNISTOrientation, Transform
from .base import DatasetSource, Split

_IDX = ("images-idx3-ubyte", "labels-idx1-ubyte")


def _tv_hint(cls: str, root: str, extra: str = "") -> str:
    return f"torchvision.datasets.{cls}(root='{root}'{extra}, download=True) fetches it."


# --- MNIST family: raw idx files under <root>/<ClassName>/raw ------------------------------------------------------


def _mnist_like(name: str, subdir: str, cls: type[tvd.MNIST]) -> DatasetSource:
    """MNIST, FashionMNIST, KMNIST: ``<root>/<subdir>/<ClassName>/raw/{train,t10k}-*-ubyte``."""

    def paths(root: Path, split: Split) -> list[Path]:
        prefix = "train" if split == "train" else "t10k"
        return [root / subdir / cls.__name__ / "raw" / f"{prefix}-{suffix}" for suffix in _IDX]

    def load(root: Path, split: Split, transform: Transform) -> Dataset:
        return cls(str(root / subdir), train=split == "train", transform=transform, target_transform=int)

    hint_root = f"{{location}}/{subdir}" if subdir else "{location}"
    return DatasetSource(name, paths, load, _tv_hint(cls.__name__, hint_root))


def _emnist_paths(root: Path, split: Split) -> list[Path]:
    prefix = f"emnist-digits-{'train' if split == 'train' else 'test'}"
    return [root / "EMNIST" / "raw" / f"{prefix}-{suffix}" for suffix in _IDX]


def _emnist_load(root: Path, split: Split, transform: Transform) -> Dataset:
    # The orientation fix runs after preprocessing, as in the published loader (see EMNISTOrientation).
    return tvd.EMNIST(
        str(root), split="digits", train=split == "train",
        transform=Chain(transform, EMNISTOrientation()), target_transform=int,
    )


# --- CIFAR: pickled batches --------------------------------------------------------------------------------------


def _cifar(name: str, cls: type[tvd.CIFAR10]) -> DatasetSource:
    def paths(root: Path, split: Split) -> list[Path]:
        # torchvision checks the md5 of every batch (both splits) and of the meta file.
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / f for f in files]

    def load(root: Path, split: Split, transform: Transform) -> Dataset:
        return cls(str(root), train=split == "train", transform=transform, target_transform=int)

    return DatasetSource(name, paths, load, _tv_hint(cls.__name__, "{location}"))


# --- datasets with a split argument ------------------------------------------------------------------------------


def _svhn_paths(root: Path, split: Split) -> list[Path]:
    return [root / "svhn" / tvd.SVHN.split_list[split][1]]


def _svhn_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.SVHN(str(root / "svhn"), split=split, transform=transform, target_transform=int)


def _stl10_paths(root: Path, split: Split) -> list[Path]:
    folder = root / "stl10" / tvd.STL10.base_folder
    files = [f for f, _ in tvd.STL10.train_list + tvd.STL10.test_list] + [tvd.STL10.class_names_file]
    return [folder / f for f in files]


def _stl10_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.STL10(str(root / "stl10"), split=split, transform=transform, target_transform=int)


def _pet_paths(root: Path, split: Split) -> list[Path]:
    base = root / "OxfordIIITPet" / "oxford-iiit-pet"
    return [base / "images", base / "annotations" / f"{_pet_split(split)}.txt"]


def _pet_split(split: Split) -> str:
    return "trainval" if split == "train" else "test"


def _pet_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.OxfordIIITPet(
        str(root / "OxfordIIITPet"), split=_pet_split(split), transform=transform, target_transform=int
    )


def _flowers_paths(root: Path, split: Split) -> list[Path]:
    base = root / "flowers102" / "flowers-102"
    return [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]


def _flowers_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.Flowers102(str(root / "flowers102"), split=split, transform=transform, target_transform=int)


def _pcam_paths(root: Path, split: Split) -> list[Path]:
    files = tvd.PCAM._FILES[split]
    return [root / "PCAM" / "pcam" / files[kind][0] for kind in ("images", "targets")]


def _pcam_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.PCAM(str(root / "PCAM"), split=split, transform=transform, target_transform=int)


def _food_paths(root: Path, split: Split) -> list[Path]:
    base = root / "food101" / "food-101"
    return [base / "images", base / "meta" / f"{split}.json"]


def _food_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.Food101(str(root / "food101"), split=split, transform=transform, target_transform=int)


def _sst2_paths(root: Path, split: Split) -> list[Path]:
    folder = {"train": "train", "val": "valid", "test": "test"}[split]
    return [root / "RenderedSST2" / "rendered-sst2" / folder / c for c in ("negative", "positive")]


def _sst2_load(root: Path, split: Split, transform: Transform) -> Dataset:
    return tvd.RenderedSST2(str(root / "RenderedSST2"), split=split, transform=transform, target_transform=int)


SOURCES: tuple[DatasetSource, ...] = (
    _mnist_like("MNIST", "", tvd.MNIST),
    _mnist_like("FashionMNIST", "", tvd.FashionMNIST),
    _mnist_like("KMNIST", "KMNIST", tvd.KMNIST),
    DatasetSource(
        "EMNIST", _emnist_paths, _emnist_load, _tv_hint("EMNIST", "{location}", ", split='digits'")
    ),
    _cifar("CIFAR10", tvd.CIFAR10),
    _cifar("CIFAR100", tvd.CIFAR100),
    DatasetSource("SVHN", _svhn_paths, _svhn_load, _tv_hint("SVHN", "{location}/svhn", ", split='train'|'test'")),
    DatasetSource("STL10", _stl10_paths, _stl10_load, _tv_hint("STL10", "{location}/stl10")),
    DatasetSource(
        "OxfordIIITPet", _pet_paths, _pet_load, _tv_hint("OxfordIIITPet", "{location}/OxfordIIITPet")
    ),
    DatasetSource("Flowers102", _flowers_paths, _flowers_load, _tv_hint("Flowers102", "{location}/flowers102")),
    DatasetSource(
        "PCAM", _pcam_paths, _pcam_load,
        _tv_hint("PCAM", "{location}/PCAM", ", split='train'|'test'")
        + " (downloading needs gdown, reading needs h5py)",
    ),
    DatasetSource("Food101", _food_paths, _food_load, _tv_hint("Food101", "{location}/food101")),
    DatasetSource(
        "RenderedSST2", _sst2_paths, _sst2_load, _tv_hint("RenderedSST2", "{location}/RenderedSST2")
    ),
)
