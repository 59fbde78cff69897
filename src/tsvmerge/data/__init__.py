"""Datasets of the 20-task benchmark: registry and splits, prompt templates / class names, cached eval tensors."""

from .cache import cache_key, cached_split, cached_tensors
from .errors import DatasetNotFoundError
from .registry import BENCHMARK_DATASETS, REGISTRY, get_classnames, get_dataset, task_list
from .splits import split_train_val
from .task_dataset import TaskDataset
from .templates import class_synonyms, classnames, templates

__all__ = [
    "BENCHMARK_DATASETS",
    "REGISTRY",
    "DatasetNotFoundError",
    "TaskDataset",
    "cache_key",
    "cached_split",
    "cached_tensors",
    "class_synonyms",
    "classnames",
    "get_classnames",
    "get_dataset",
    "split_train_val",
    "task_list",
    "templates",
]
