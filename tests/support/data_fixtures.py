"""Tiny copies of the 20 benchmark datasets in their real on-disk formats (SPEC §5), for tests.

``make_dataset_fixture(name, location)`` writes a few small images of 3 classes (or the class count the format needs)
under ``location`` exactly where ``tsvmerge.data.get_dataset`` looks for the real files, and returns the split
sizes. torchvision verifies the md5 of some real files: call ``patch_torchvision_integrity(monkeypatch)`` before
loading CIFAR, SVHN, STL10 or Flowers102 fixtures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pytest

N_TRAIN = 20
N_TEST = 10


@dataclass(frozen=True)
class FixtureInfo:
    """Sizes of the written splits (``val`` only for datasets with their own validation split) and the labels the
    test split must yield, in dataset order."""

    train: int
    test: int
    val: int | None = None
    test_labels: tuple[int, ...] = ()


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _pixels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _save_image(path: Path, rng: np.random.Generator, size: int = 8, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(_pixels(rng, shape)).convert(mode).save(path)


def _labels(n: int, k: int = 3, start: int = 0) -> list[int]:
    return [start + i % k for i in range(n)]


def _blocks(k: int, per_class: int) -> tuple[int, ...]:
    """Labels of a class-sorted split: ``per_class`` zeros, then ones, ..."""
    return tuple(c for c in range(k) for _ in range(per_class))


# --- MNIST family: uncompressed idx files, as torchvision keeps them after download ---------------------------------


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: list[int]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x801, n) + np.asarray(labels, dtype=np.uint8).tobytes()
    )


def _mnist_family(raw: Path, rng: np.random.Generator, train_prefix: str, test_prefix: str) -> FixtureInfo:
    _write_idx(raw, train_prefix, _pixels(rng, (N_TRAIN, 28, 28)), _labels(N_TRAIN, 10))
    _write_idx(raw, test_prefix, _pixels(rng, (N_TEST, 28, 28)), _labels(N_TEST, 10))
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST, 10)))


def make_mnist(loc: Path) -> FixtureInfo:
    return _mnist_family(loc / "MNIST" / "raw", _rng("MNIST"), "train", "t10k")


def make_fashion_mnist(loc: Path) -> FixtureInfo:
    return _mnist_family(loc / "FashionMNIST" / "raw", _rng("FashionMNIST"), "train", "t10k")


def make_kmnist(loc: Path) -> FixtureInfo:
    return _mnist_family(loc / "KMNIST" / "KMNIST" / "raw", _rng("KMNIST"), "train", "t10k")


def make_emnist(loc: Path) -> FixtureInfo:
    raw = loc / "EMNIST" / "raw"
    return _mnist_family(raw, _rng("EMNIST"), "emnist-digits-train", "emnist-digits-test")


# --- CIFAR: pickled batches ---------------------------------------------------------------------------------------


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(loc: Path) -> FixtureInfo:
    rng, folder = _rng("CIFAR10"), loc / "cifar-10-batches-py"
    per_batch = N_TRAIN // 5
    for b in range(1, 6):
        _pickle(folder / f"data_batch_{b}", {"data": _pixels(rng, (per_batch, 3072)), "labels": _labels(per_batch)})
    _pickle(folder / "test_batch", {"data": _pixels(rng, (N_TEST, 3072)), "labels": _labels(N_TEST)})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch})
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST)))


def make_cifar100(loc: Path) -> FixtureInfo:
    rng, folder = _rng("CIFAR100"), loc / "cifar-100-python"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        _pickle(folder / split, {"data": _pixels(rng, (n, 3072)), "fine_labels": _labels(n), "coarse_labels": [0] * n})
    _pickle(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)], "coarse_label_names": ["c"]})
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST)))


# --- MATLAB / binary formats --------------------------------------------------------------------------------------


def make_svhn(loc: Path) -> FixtureInfo:
    from scipy.io import savemat

    rng, folder = _rng("SVHN"), loc / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.asarray(_labels(n, 10, start=1), dtype=np.uint8).reshape(n, 1)  # 1..10, 10 means digit 0
        savemat(folder / f"{split}_32x32.mat", {"X": _pixels(rng, (32, 32, 3, n)), "y": labels})
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(label % 10 for label in _labels(N_TEST, 10, start=1)))


def make_stl10(loc: Path) -> FixtureInfo:
    rng, folder = _rng("STL10"), loc / "stl10" / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        (folder / f"{split}_X.bin").write_bytes(_pixels(rng, (n, 3, 96, 96)).tobytes())
        (folder / f"{split}_y.bin").write_bytes(np.asarray(_labels(n, 10, start=1), dtype=np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST, 10)))


def make_flowers102(loc: Path) -> FixtureInfo:
    from scipy.io import savemat

    rng, base = _rng("Flowers102"), loc / "flowers102" / "flowers-102"
    n_train, n_val, n_test = 12, 6, N_TEST
    total = n_train + n_val + n_test
    for i in range(1, total + 1):
        _save_image(base / "jpg" / f"image_{i:05d}.jpg", rng)
    savemat(base / "imagelabels.mat", {"labels": np.asarray(_labels(total, start=1), dtype=np.uint8)[None]})
    ids = np.arange(1, total + 1, dtype=np.uint16)
    savemat(
        base / "setid.mat",
        {"trnid": ids[:n_train][None], "valid": ids[n_train : n_train + n_val][None], "tstid": ids[-n_test:][None]},
    )
    return FixtureInfo(n_train, n_test, test_labels=tuple(_labels(total)[-n_test:]))


def make_pcam(loc: Path) -> FixtureInfo:
    import h5py

    rng, folder = _rng("PCAM"), loc / "PCAM" / "pcam"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST), ("valid", 4)):
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=_pixels(rng, (n, 8, 8, 3)))
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=np.asarray(_labels(n, 2), dtype=np.uint8).reshape(n, 1, 1, 1))
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST, 2)))


def make_cars(loc: Path) -> FixtureInfo:
    from scipy.io import savemat

    rng, base = _rng("Cars"), loc / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None]})
    n_train, n_test = 18, 9
    for split, n, mat in (
        ("train", n_train, base / "devkit" / "cars_train_annos.mat"),
        ("test", n_test, base / "cars_test_annos_withlabels.mat"),
    ):
        fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
        records = np.zeros((1, n), dtype=[(f, "O") for f in fields])
        for i, label in enumerate(_labels(n, start=1)):
            fname = f"{i + 1:05d}.jpg"
            _save_image(base / f"cars_{split}" / fname, rng)
            records[0, i] = (np.uint8(0), np.uint8(0), np.uint8(7), np.uint8(7), np.uint8(label), fname)
        savemat(mat, {"annotations": records})
    return FixtureInfo(n_train, n_test, test_labels=tuple(_labels(n_test)))


# --- image folders and lists --------------------------------------------------------------------------------------


def _folders(base: Path, rng: np.random.Generator, classes: list[str], per_class: int, ext: str = "jpg") -> int:
    for cls in classes:
        for j in range(per_class):
            _save_image(base / cls / f"{cls}_{j:03d}.{ext}", rng)
    return len(classes) * per_class


def make_dtd(loc: Path) -> FixtureInfo:
    rng, classes = _rng("DTD"), ["banded", "blotchy", "polka_dotted"]
    train = _folders(loc / "dtd" / "train", rng, classes, 6)
    return FixtureInfo(train, _folders(loc / "dtd" / "val", rng, classes, 3), test_labels=_blocks(3, 3))


def make_eurosat(loc: Path) -> FixtureInfo:
    rng, base = _rng("EuroSAT"), loc / "EuroSAT_splits"
    classes = ["AnnualCrop", "HerbaceousVegetation", "Industrial"]
    train = _folders(base / "train", rng, classes, 6)
    val = _folders(base / "val", rng, classes, 2)
    return FixtureInfo(train, _folders(base / "test", rng, classes, 3), val, test_labels=_blocks(3, 3))


def make_sun397(loc: Path) -> FixtureInfo:
    rng, classes = _rng("SUN397"), ["a_abbey", "a_airplane_cabin", "b_bakery_shop"]
    base = loc / "sun397"
    train = _folders(base / "train", rng, classes, 6)
    return FixtureInfo(train, _folders(base / "val", rng, classes, 3), test_labels=_blocks(3, 3))


def make_rendered_sst2(loc: Path) -> FixtureInfo:
    rng, base = _rng("RenderedSST2"), loc / "RenderedSST2" / "rendered-sst2"
    classes = ["negative", "positive"]
    train = _folders(base / "train", rng, classes, N_TRAIN // 2, "png")
    _folders(base / "valid", rng, classes, 2, "png")
    test = _folders(base / "test", rng, classes, N_TEST // 2, "png")
    return FixtureInfo(train, test, test_labels=_blocks(2, N_TEST // 2))


def make_gtsrb(loc: Path) -> FixtureInfo:
    rng, base = _rng("GTSRB"), loc / "gtsrb"
    for c in range(3):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        for j in range(7):
            _save_image(folder / f"00000_{j:05d}.ppm", rng)
        (folder / f"GT-{c:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, label in enumerate(_labels(N_TEST, 43)):
            _save_image(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", rng)
            writer.writerow([f"{i:05d}.ppm", 8, 8, 0, 0, 7, 7, label])
    return FixtureInfo(21, N_TEST, test_labels=tuple(_labels(N_TEST, 43)))


def make_resisc45(loc: Path) -> FixtureInfo:
    rng, base = _rng("RESISC45"), loc / "resisc45"
    classes = ["airplane", "airport", "baseball_diamond"]
    _folders(base / "NWPU-RESISC45", rng, classes, 10)
    names = {cls: [f"{cls}_{j:03d}.jpg" for j in range(10)] for cls in classes}
    for split, sl in (("train", slice(0, 6)), ("val", slice(6, 8)), ("test", slice(8, 10))):
        (base / f"resisc45-{split}.txt").write_text("".join(f"{n}\n" for c in classes for n in names[c][sl]))
    return FixtureInfo(18, 6, 6, test_labels=_blocks(3, 2))


def make_pet(loc: Path) -> FixtureInfo:
    rng, base = _rng("OxfordIIITPet"), loc / "OxfordIIITPet" / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (name, species: 1 cat, 2 dog)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    counter = 0
    for split, per_class in (("trainval", 6), ("test", 3)):
        lines = []
        for label, (breed, species) in enumerate(breeds, start=1):
            for _ in range(per_class):
                counter += 1
                image_id = f"{breed}_{counter}"
                _save_image(base / "images" / f"{image_id}.jpg", rng)
                lines.append(f"{image_id} {label} {species} {counter}\n")
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return FixtureInfo(18, 9, test_labels=_blocks(3, 3))


def make_food101(loc: Path) -> FixtureInfo:
    rng, base = _rng("Food101"), loc / "food101" / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    (base / "meta").mkdir(parents=True, exist_ok=True)
    counter = 1000
    for split, per_class in (("train", 6), ("test", 3)):
        meta: dict[str, list[str]] = {}
        for cls in classes:
            ids = [f"{cls}/{counter + j}" for j in range(per_class)]
            counter += per_class
            for rel in ids:
                _save_image(base / "images" / f"{rel}.jpg", rng)
            meta[cls] = ids
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    return FixtureInfo(18, 9, test_labels=_blocks(3, 3))


def make_fer2013(loc: Path) -> FixtureInfo:
    import datasets

    rng = _rng("FER2013")

    def split(n: int) -> datasets.Dataset:
        blobs = []
        for _ in range(n):
            buffer = io.BytesIO()
            Image.fromarray(_pixels(rng, (8, 8))).save(buffer, format="PNG")  # grayscale, like the real 48x48 faces
            blobs.append(buffer.getvalue())
        return datasets.Dataset.from_dict({"img_bytes": blobs, "labels": _labels(n, 7)})

    datasets.DatasetDict({"train": split(N_TRAIN), "test": split(N_TEST)}).save_to_disk(str(loc / "fer2013"))
    return FixtureInfo(N_TRAIN, N_TEST, test_labels=tuple(_labels(N_TEST, 7)))


MAKERS: dict[str, Callable[[Path], FixtureInfo]] = {
    "Cars": make_cars,
    "DTD": make_dtd,
    "EuroSAT": make_eurosat,
    "GTSRB": make_gtsrb,
    "MNIST": make_mnist,
    "RESISC45": make_resisc45,
    "SVHN": make_svhn,
    "SUN397": make_sun397,
    "STL10": make_stl10,
    "OxfordIIITPet": make_pet,
    "Flowers102": make_flowers102,
    "CIFAR100": make_cifar100,
    "PCAM": make_pcam,
    "FER2013": make_fer2013,
    "CIFAR10": make_cifar10,
    "Food101": make_food101,
    "FashionMNIST": make_fashion_mnist,
    "RenderedSST2": make_rendered_sst2,
    "EMNIST": make_emnist,
    "KMNIST": make_kmnist,
}


def make_dataset_fixture(name: str, location: str | os.PathLike[str]) -> FixtureInfo:
    """Write the tiny fixture of dataset ``name`` (without 'Val') under ``location``; return its split sizes."""
    return MAKERS[name](Path(location))


def make_all_fixtures(location: str | os.PathLike[str]) -> dict[str, FixtureInfo]:
    """Write all 20 fixtures under ``location``."""
    return {name: make_dataset_fixture(name, location) for name in MAKERS}


def patch_torchvision_integrity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's md5 checks accept the fixture files (existence only); production code keeps them."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.flowers102 as flowers102
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    for module in (cifar, svhn, stl10, flowers102):
        monkeypatch.setattr(module, "check_integrity", exists)
