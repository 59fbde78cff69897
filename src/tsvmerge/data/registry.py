"""The benchmark's dataset list and ``get_dataset``: name -> train/test (or train/val) datasets (SPEC §4, §5)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import MappingProxyType

from torch.utils.data import Dataset, Subset

from .datasets import ALL_SOURCES, DatasetSource
from .datasets.synthetic import SYNTHETIC_TASKS
from .splits import MAX_VAL_SAMPLES, SEED, VAL_FRACTION, split_train_val
from .task_dataset import TaskDataset
from .templates import base_name, classnames, rule_classnames
from .transforms import Chain, ToRGB, Transform

# SPEC §4: the first 8 / 14 / 20 are the paper's benchmarks.
BENCHMARK_DATASETS: tuple[str, ...] = (
    "Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397", "STL10", "OxfordIIITPet",
    "Flowers102", "CIFAR100", "PCAM", "FER2013", "CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "EMNIST",
    "KMNIST",
)

#: Task lists a model config can name (``benchmark:`` in ``config/model/<name>.yaml``): ``num_tasks=T`` means the
#: first T of its list. ``paper``: the 20 datasets of the paper; ``synthetic``: the generated tasks of the demo.
BENCHMARKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"paper": BENCHMARK_DATASETS, "synthetic": SYNTHETIC_TASKS})

REGISTRY: Mapping[str, DatasetSource] = MappingProxyType({s.name: s for s in ALL_SOURCES})


def benchmark_tasks(benchmark: str = "paper") -> tuple[str, ...]:
    """The task list named ``benchmark`` (see :data:`BENCHMARKS`)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark]


def is_benchmark_prefix(datasets: Sequence[str]) -> bool:
    """Whether ``datasets`` are the first T tasks of a benchmark (named ``<T>tasks`` in result files) rather than
    an explicit list."""
    names = tuple(datasets)
    return bool(names) and any(names == tasks[: len(names)] for tasks in BENCHMARKS.values())


def task_list(num_tasks: int | None = None, datasets: Sequence[str] | None = None,
              benchmark: str = "paper") -> list[str]:
    """The tasks of a run: ``datasets`` if given (validated; ``num_tasks`` is then ignored, as in the published
    code), else the first ``num_tasks`` (default: all) of the benchmark's list (:data:`BENCHMARKS`)."""
    if datasets is not None:
        names = list(datasets)
        for name in names:
            _source(name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Datasets listed more than once: {duplicates}")
        if not names:
            raise ValueError("The dataset list is empty")
        return names
    tasks = benchmark_tasks(benchmark)
    n = len(tasks) if num_tasks is None else num_tasks
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(tasks):
        raise ValueError(f"num_tasks must be an integer in 1..{len(tasks)}, got {num_tasks!r}")
    return list(tasks[:n])


def get_dataset(
    name: str,
    preprocess: Transform | None,
    location: str | os.PathLike[str],
    batch_size: int = 128,
    num_workers: int | None = None,
    val_fraction: float = VAL_FRACTION,
    max_val_samples: int | None = MAX_VAL_SAMPLES,
    seed: int = SEED,
) -> TaskDataset:
    """Train and test datasets of task ``name`` under ``location``; images go through RGB conversion then
    ``preprocess``.

    - ``<Name>``: train = the full train split, test = the test split of SPEC §5 (DTD, SUN397: their ``val`` folder).
    - ``<Name>Val`` with an own validation split (EuroSAT's ``val`` folder, RESISC45's ``resisc45-val.txt``):
      test = that split, train = the train split.
    - ``<Name>Val`` otherwise: the train split is divided by :func:`tsvmerge.data.splits.split_train_val`
      (val size = min(int(val_fraction * n), max_val_samples), ``random_split`` with seed ``seed``);
      test = the validation part, train = the rest.

    The files the requested splits need are checked at once (one DatasetNotFoundError listing what is missing);
    the datasets themselves are read lazily on first access.
    """
    base = base_name(name)
    source = _source(base)
    root = Path(location).expanduser()
    transform = Chain(ToRGB(), preprocess)
    is_val = base != name
    workers = default_num_workers() if num_workers is None else num_workers

    open_train = cache(lambda: source.open(root, "train", transform))
    if not is_val:
        source.check(root, ["train", "test"])
        make_train, make_test = open_train, cache(lambda: source.open(root, "test", transform))
    elif source.has_val:
        source.check(root, ["train", "val"])
        make_train, make_test = open_train, cache(lambda: source.open(root, "val", transform))
    else:
        source.check(root, ["train"])
        parts = cache(lambda: split_train_val(open_train(), val_fraction, max_val_samples, seed,
                                              name=f"Dataset {name} under data_location '{root}'"))
        make_train, make_test = (lambda: parts()[0]), (lambda: parts()[1])

    def make_classnames() -> list[str]:
        try:
            return classnames(base)
        except LookupError:
            return rule_classnames(base, _raw_classes(make_test()))

    cache_id = _cache_id(name, root, transform, is_val and not source.has_val, val_fraction, max_val_samples, seed)
    return TaskDataset(
        name, make_train, make_test, make_classnames, batch_size=batch_size, num_workers=workers, cache_id=cache_id
    )


def get_classnames(name: str, location: str | os.PathLike[str]) -> list[str]:
    """Class names of ``name`` in label order, reading the dataset's files only where the names come from them."""
    try:
        return classnames(name)
    except LookupError:
        return get_dataset(base_name(name), None, location, num_workers=0).classnames


def default_num_workers() -> int:
    """DataLoader workers when none are given: up to 8, never more than the CPUs available."""
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _source(name: str) -> DatasetSource:
    base = base_name(name)
    if base not in REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(BENCHMARK_DATASETS)}, and the "
                         f"synthetic demo tasks {', '.join(SYNTHETIC_TASKS)} (optionally + 'Val')")
    return REGISTRY[base]


def _raw_classes(dataset: Dataset) -> list[str]:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(dataset.classes)  # type: ignore[attr-defined]


def _cache_id(name: str, root: Path, transform: Transform, random_val: bool, *split_args: object) -> str:
    """Everything that determines a split's preprocessed tensors (see ``tsvmerge.data.cache``)."""
    # Function reprs carry memory addresses ('<function f at 0x7f...>'), which change every run.
    parts = [name, str(root.resolve()), re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))]
    if random_val:
        parts.append(repr(split_args))
    return "|".join(parts)
