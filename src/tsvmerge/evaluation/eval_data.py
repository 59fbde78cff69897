"""The evaluation data of a merged model: each task's validation and test splits (built once, cached as the run
asks) and its zero-shot classification head (loaded, or built and saved)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import class_synonyms, get_dataset, templates
from ..data.registry import default_num_workers
from ..data.task_dataset import TaskDataset
from ..models.factory import ModelSpec
from ..models.zeroshot_heads import load_or_build_heads
from .evaluate import CachePolicy, EvalSplit, Runtime

__all__ = ["EvalData", "build_eval_data"]


@dataclass
class EvalData:
    """Per dataset (base name): validation and test splits and the zero-shot head."""

    val: dict[str, EvalSplit]
    test: dict[str, EvalSplit]
    heads: dict[str, torch.nn.Module]


def _policies(eval_cache: str) -> tuple[CachePolicy, CachePolicy]:
    """(validation, test) cache policies: validation splits are evaluated once per α, test splits once."""
    return {"memory": ("memory", "stream"), "disk": ("disk", "disk"), "none": ("stream", "stream")}[eval_cache]


def _synonyms(name: str, task: TaskDataset) -> list[list[str]]:
    try:
        return class_synonyms(name)
    except LookupError:  # class names that come from the dataset's files
        return [[c] for c in task.classnames]


def build_eval_data(spec: ModelSpec, datasets: list[str], preprocess: Any, *, data_location: Path,
                    model_location: Path, batch_size: int, num_workers: int | None, eval_cache: str,
                    cache_dir: Path, runtime: Runtime, shared_weights: Mapping[str, torch.Tensor] | None,
                    progress: bool, splits: tuple[str, ...] = ("val", "test")) -> EvalData:
    """Datasets (each built once), their evaluation splits and the heads (loaded, or built and saved)."""
    workers = default_num_workers() if num_workers is None else num_workers
    val_policy, test_policy = _policies(eval_cache)
    pin = runtime.on_cuda
    val, test, tasks = {}, {}, {}
    for d in datasets:
        if "val" in splits:
            task = get_dataset(f"{d}Val", preprocess, data_location, batch_size=batch_size, num_workers=workers)
            val[d] = EvalSplit(f"{d}Val", task, val_policy, cache_dir, batch_size, workers, pin)
        if "test" in splits:
            tasks[d] = get_dataset(d, preprocess, data_location, batch_size=batch_size, num_workers=workers)
            test[d] = EvalSplit(d, tasks[d], test_policy, cache_dir, batch_size, workers, pin)
    heads = load_or_build_heads(
        spec, model_location, datasets,
        synonyms=lambda d: _synonyms(d, tasks[d] if d in tasks else val[d].task),
        templates=templates, shared_weights=shared_weights, device=runtime.device, progress=progress,
    )
    return EvalData(val, test, {d: h.to(runtime.device).eval() for d, h in heads.items()})
