"""Datasets of the 20-task benchmark and the synthetic demo tasks: registry and splits, prompt templates / class
names, cached eval tensors."""

from .cache import cache_key, cached_split, cached_tensors
from .errors import DatasetNotFoundError
from .registry import (
    BENCHMARK_DATASETS,
    BENCHMARKS,
    REGISTRY,
    SYNTHETIC_TASKS,
    benchmark_tasks,
    get_classnames,
    get_dataset,
    is_benchmark_prefix,
    task_list,
)
from .splits import split_train_val
from .task_dataset import TaskDataset
from .templates import class_synonyms, classnames, templates

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_DATASETS",
    "REGISTRY",
    "SYNTHETIC_TASKS",
    "DatasetNotFoundError",
    "TaskDataset",
    "cache_key",
    "cached_split",
    "benchmark_tasks",
    "cached_tensors",
    "class_synonyms",
    "classnames",
    "get_classnames",
    "get_dataset",
    "is_benchmark_prefix",
    "split_train_val",
    "task_list",
    "templates",
]
