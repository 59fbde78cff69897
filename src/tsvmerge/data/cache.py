"""Preprocess an evaluation split once and keep the tensors, so that each further evaluation (every α of a grid, every
merge method) costs only forward passes.

Tensors stay in memory, or go to ``<cache_dir>/<key>.pt`` (written atomically, read back memory-mapped) where ``key``
comes from the dataset name, the split and a hash of everything that determines the images (data location,
preprocess repr without memory addresses, validation-split parameters): see :func:`cache_key`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .task_dataset import TaskDataset


def cache_key(name: str, split: str, fingerprint: str) -> str:
    """File stem ``<name>_<split>_<16 hex digits>``; memory addresses in ``fingerprint`` are ignored."""
    stable = re.sub(r" at 0x[0-9a-fA-F]+", "", fingerprint)
    digest = hashlib.sha256(stable.encode("utf-8")).hexdigest()[:16]
    return f"{name}_{split}_{digest}"


def cached_tensors(
    dataset: Dataset,
    cache_dir: str | os.PathLike[str] | None = None,
    key: str | None = None,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    dtype: torch.dtype | None = None,
) -> TensorDataset:
    """``dataset`` materialized as ``TensorDataset(images, labels)`` (same order).

    With ``cache_dir`` the tensors are stored in / loaded from ``<cache_dir>/<key>.pt``; ``key`` is then required
    (build it with :func:`cache_key` or use :func:`cached_split`). ``dtype`` (e.g. ``torch.float16``) shrinks the
    stored images; the default keeps the preprocess output's dtype, i.e. exact results.
    """
    if cache_dir is None:
        return TensorDataset(*_materialize(dataset, batch_size, num_workers, dtype))
    if not key:
        raise ValueError("cached_tensors needs a key when cache_dir is given (see tsvmerge.data.cache.cache_key)")
    path = Path(cache_dir).expanduser() / f"{key}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if stored["images"].shape[0] == len(dataset):  # type: ignore[arg-type]
            return TensorDataset(stored["images"], stored["labels"])
    images, labels = _materialize(dataset, batch_size, num_workers, dtype)
    _atomic_save({"images": images, "labels": labels}, path)
    return TensorDataset(images, labels)


def cached_split(
    task: TaskDataset,
    split: Literal["train", "test"] = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> TensorDataset:
    """:func:`cached_tensors` of ``task``'s ``split``, keyed by the task's name, the split and its ``cache_id``."""
    dataset = task.test_dataset if split == "test" else task.train_dataset
    key = cache_key(task.name, split, task.cache_id)
    return cached_tensors(dataset, cache_dir, key, **kwargs)  # type: ignore[arg-type]


def _materialize(
    dataset: Dataset, batch_size: int, num_workers: int, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset)  # type: ignore[arg-type]
    images: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    start = 0
    for batch_images, batch_labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        if images is None:
            images = torch.empty((n, *batch_images.shape[1:]), dtype=dtype or batch_images.dtype)
        stop = start + len(batch_labels)
        images[start:stop] = batch_images
        labels[start:stop] = torch.as_tensor(batch_labels)
        start = stop
    if images is None:
        raise ValueError("Cannot cache an empty dataset")
    return images, labels


def _atomic_save(obj: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
