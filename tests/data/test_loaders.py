"""Every one of the 20 loaders, on tiny copies of the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler, Subset, random_split

from tests.support.data_fixtures import FixtureInfo, make_dataset_fixture
from tsvmerge.data import BENCHMARK_DATASETS, REGISTRY, DatasetNotFoundError, get_dataset

OWN_VAL = {"EuroSAT", "RESISC45"}


def _check_items(dataset, num_classes: int) -> list[int]:
    labels = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert type(label) is int and 0 <= label < num_classes
        labels.append(label)
    return labels


def test_only_eurosat_and_resisc45_use_their_own_val_split() -> None:
    assert {name for name in BENCHMARK_DATASETS if REGISTRY[name].has_val} == OWN_VAL


@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_test_split(name: str, data_location: Path, fixture_info: dict[str, FixtureInfo], preprocess) -> None:
    info = fixture_info[name]
    task = get_dataset(name, preprocess, data_location, batch_size=4, num_workers=0)
    assert len(task.train_dataset) == info.train
    assert len(task.test_dataset) == info.test
    assert _check_items(task.test_dataset, len(task.classnames)) == list(info.test_labels)
    _check_items(task.train_dataset, len(task.classnames))


@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_val_split(name: str, data_location: Path, fixture_info: dict[str, FixtureInfo], preprocess) -> None:
    info = fixture_info[name]
    task = get_dataset(name + "Val", preprocess, data_location, num_workers=0)
    if name in OWN_VAL:
        assert (len(task.train_dataset), len(task.test_dataset)) == (info.train, info.val)
        train_files = {path for path, _ in task.train_dataset.samples}
        val_files = {path for path, _ in task.test_dataset.samples}
        assert train_files.isdisjoint(val_files)
    else:
        n_val = int(0.1 * info.train)
        train, val = task.train_dataset, task.test_dataset
        assert isinstance(train, Subset) and isinstance(val, Subset) and train.dataset is val.dataset
        assert (len(train), len(val)) == (info.train - n_val, n_val)
        assert set(train.indices).isdisjoint(val.indices)
        assert set(train.indices) | set(val.indices) == set(range(info.train))
        ref_train, ref_val = random_split(
            range(info.train), [info.train - n_val, n_val], generator=torch.Generator().manual_seed(0)
        )
        assert list(val.indices) == list(ref_val.indices) and list(train.indices) == list(ref_train.indices)
        again = get_dataset(name + "Val", preprocess, data_location, num_workers=0)
        assert list(again.test_dataset.indices) == list(val.indices)
    _check_items(task.test_dataset, len(task.classnames))


@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_missing_dataset_gives_one_clear_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset(name, None, tmp_path)
    message = str(err.value)
    assert f"Dataset {name} not found" in message and str(tmp_path) in message
    assert "How to prepare it:" in message and "{location}" not in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_test_split_only_names_what_is_missing(tmp_path: Path) -> None:
    make_dataset_fixture("DTD", tmp_path)
    for path in sorted((tmp_path / "dtd" / "val").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "dtd" / "val").rmdir()
    assert len(get_dataset("DTDVal", None, tmp_path).test_dataset) == 1  # the val split needs train only
    with pytest.raises(DatasetNotFoundError, match=r"Missing:\n  - .*dtd/val\nHow to prepare"):
        get_dataset("DTD", None, tmp_path)


def test_corrupt_files_are_reported_as_missing(data_location: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # restore torchvision's md5 checks: the fixture files do not match the real checksums
    task = get_dataset("CIFAR10", None, data_location)
    with pytest.raises(DatasetNotFoundError, match="rejected by torchvision"):
        _ = task.test_dataset


def test_grayscale_images_become_rgb(data_location: Path, preprocess) -> None:
    for name in ("MNIST", "FER2013"):
        image, _ = get_dataset(name, preprocess, data_location).test_dataset[0]
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    image, _ = get_dataset("MNIST", None, data_location).test_dataset[0]
    assert image.mode == "RGB"


def test_loaders(data_location: Path, preprocess) -> None:
    task = get_dataset("MNIST", preprocess, data_location, batch_size=4, num_workers=0)
    assert isinstance(task.train_loader.sampler, RandomSampler)
    assert isinstance(task.test_loader.sampler, SequentialSampler)
    images, labels = next(iter(task.test_loader))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 1, 2, 3]


def test_location_accepts_str_and_user_dir(data_location: Path, preprocess) -> None:
    assert len(get_dataset("KMNIST", preprocess, str(data_location)).test_dataset) == 10
