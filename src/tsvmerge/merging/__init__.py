"""Merging math and the streaming engine. Importing this package registers every method."""

from . import methods as _methods  # noqa: F401  (registers the methods)
from .engine import MergeResult, apply_task_vector, flat_task_masks, merge
from .registry import (
    EntryMerge,
    MaskFiles,
    MergeMethod,
    available_methods,
    build_method,
    method_color,
    method_label,
    method_parameters,
    register,
    unregister,
)
from .task_vectors import TaskEntry, TaskVectors

__all__ = [
    "EntryMerge", "MaskFiles", "MergeMethod", "MergeResult", "TaskEntry", "TaskVectors", "apply_task_vector",
    "available_methods", "build_method", "flat_task_masks", "merge", "method_color", "method_label",
    "method_parameters", "register", "unregister",
]
