"""The object ``get_dataset`` returns: one task's train and test datasets, class names and loaders."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from torch.utils.data import DataLoader, Dataset


class TaskDataset:
    """Train/test datasets of one task, built lazily so that evaluating a test split never reads the train split.

    ``train_dataset``/``test_dataset`` yield ``(image, int label)``; for ``<Name>Val`` the test side is the validation
    split (see :func:`tsvmerge.data.get_dataset`).
    """

    def __init__(
        self,
        name: str,
        make_train: Callable[[], Dataset],
        make_test: Callable[[], Dataset],
        make_classnames: Callable[[], list[str]],
        batch_size: int = 128,
        num_workers: int = 0,
        cache_id: str = "",
    ) -> None:
        self.name = name
        self.cache_id = cache_id  # what determines the preprocessed tensors; keys tsvmerge.data.cache files
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._make_train = make_train
        self._make_test = make_test
        self._make_classnames = make_classnames

    @cached_property
    def train_dataset(self) -> Dataset:
        return self._make_train()

    @cached_property
    def test_dataset(self) -> Dataset:
        return self._make_test()

    @cached_property
    def classnames(self) -> list[str]:
        return self._make_classnames()

    @property
    def train_loader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers
        )

    @property
    def test_loader(self) -> DataLoader:
        return DataLoader(
            self.test_dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )

    def __repr__(self) -> str:
        return f"TaskDataset({self.name!r}, batch_size={self.batch_size}, num_workers={self.num_workers})"
