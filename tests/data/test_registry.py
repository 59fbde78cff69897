from __future__ import annotations

import pytest

from tsvmerge.data import BENCHMARK_DATASETS, REGISTRY, get_dataset, task_list
from tsvmerge.data.datasets.synthetic import SYNTHETIC_TASKS


def test_benchmark_order_matches_spec() -> None:
    assert BENCHMARK_DATASETS[:8] == ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397")
    assert BENCHMARK_DATASETS[8:14] == ("STL10", "OxfordIIITPet", "Flowers102", "CIFAR100", "PCAM", "FER2013")
    assert BENCHMARK_DATASETS[14:] == ("CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "EMNIST", "KMNIST")
    assert sorted(REGISTRY) == sorted((*BENCHMARK_DATASETS, *SYNTHETIC_TASKS))  # + the generated demo tasks


@pytest.mark.parametrize("n", [1, 8, 14, 20])
def test_task_list_takes_a_prefix(n: int) -> None:
    assert task_list(n) == list(BENCHMARK_DATASETS[:n])


def test_task_list_defaults_to_all() -> None:
    assert task_list() == list(BENCHMARK_DATASETS)


@pytest.mark.parametrize("n", [0, -1, 21, 2.5])
def test_task_list_rejects_bad_counts(n: object) -> None:
    with pytest.raises(ValueError, match="num_tasks"):
        task_list(n)  # type: ignore[arg-type]


def test_explicit_datasets_are_validated() -> None:
    assert task_list(8, datasets=["MNIST", "KMNIST"]) == ["MNIST", "KMNIST"]
    with pytest.raises(ValueError, match="valid names: Cars, DTD"):
        task_list(datasets=["MNIST", "ImageNet"])
    with pytest.raises(ValueError, match="more than once"):
        task_list(datasets=["MNIST", "MNIST"])
    with pytest.raises(ValueError, match="empty"):
        task_list(datasets=[])


def test_get_dataset_rejects_unknown_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown dataset 'Imagenet'.*KMNIST"):
        get_dataset("Imagenet", None, tmp_path)
