from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

from tsvmerge.data import cache_key, cached_split, cached_tensors, get_dataset


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_in_memory(data_location: Path, preprocess) -> None:
    task = get_dataset("CIFAR10", preprocess, data_location)
    cached = cached_tensors(task.test_dataset, batch_size=3)
    images, labels = _stack(task.test_dataset)
    assert torch.equal(cached.tensors[0], images) and torch.equal(cached.tensors[1], labels)


def test_on_disk_is_reused(data_location: Path, preprocess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = get_dataset("MNISTVal", preprocess, data_location)
    first = cached_split(task, "test", tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("MNISTVal_test_")
    again = get_dataset("MNISTVal", preprocess, data_location)
    mnist_class = type(again.test_dataset.dataset)  # a Subset of torchvision's MNIST
    monkeypatch.setattr(mnist_class, "__getitem__", lambda self, i: pytest.fail("recomputed"))
    second = cached_split(again, "test", tmp_path)
    assert torch.equal(first.tensors[0], second.tensors[0]) and torch.equal(first.tensors[1], second.tensors[1])


def test_keys_separate_splits_and_preprocessing(data_location: Path, preprocess) -> None:
    other = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    ids = {
        get_dataset("MNIST", preprocess, data_location).cache_id,
        get_dataset("MNISTVal", preprocess, data_location).cache_id,
        get_dataset("MNIST", other, data_location).cache_id,
        get_dataset("MNISTVal", preprocess, data_location, seed=1).cache_id,
    }
    assert len(ids) == 4


def test_key_ignores_memory_addresses() -> None:
    assert cache_key("A", "test", "<function f at 0x7f00aa>") == cache_key("A", "test", "<function f at 0x55bb>")
    assert cache_key("A", "test", "x") != cache_key("A", "train", "x")


def test_disk_cache_needs_a_key(data_location: Path, preprocess, tmp_path: Path) -> None:
    task = get_dataset("MNIST", preprocess, data_location)
    with pytest.raises(ValueError, match="key"):
        cached_tensors(task.test_dataset, tmp_path)
