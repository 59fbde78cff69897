"""Top-1 of the fine-tuned encoder on its task's test (``<Dataset>``) and validation (``<Dataset>Val``) splits.

The evaluation code of ``eval_single_task.py`` (:class:`tsvmerge.evaluation.evaluate.Evaluator` over an
:class:`~tsvmerge.evaluation.evaluate.EvalSplit`, the split uint8 preprocess) run by every rank on its own
interleaved shard of each split; the correct counts are summed over the ranks, so the numbers equal those of
``eval_single_task.py --finetuning-mode=standard`` (same preprocessing, same forward passes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..data import get_dataset
from ..data.task_dataset import TaskDataset
from ..evaluation.evaluate import EvalSplit, Evaluator, Runtime
from ..models.preprocess import split_preprocess
from .distributed import DistContext

__all__ = ["evaluate_task"]


def _shard(task: TaskDataset, ctx: DistContext) -> TaskDataset:
    full = task.test_dataset
    indices = list(range(ctx.rank, len(full), ctx.world_size))  # type: ignore[arg-type]
    return TaskDataset(task.name, lambda: task.train_dataset, lambda: Subset(full, indices), lambda: task.classnames,
                       batch_size=task.batch_size, num_workers=task.num_workers)


def evaluate_task(ctx: DistContext, encoder: torch.nn.Module, head: torch.nn.Module, dataset: str,
                  preprocess: Callable[[Any], Any], data_location: str | Path, *, batch_size: int = 128,
                  num_workers: int = 0, precision: str = "bf16", progress: bool = True) -> dict[str, float]:
    """``{dataset: test top-1, f"{dataset}Val": validation top-1}``, identical on every rank."""
    runtime = Runtime(ctx.device, precision, channels_last=False)  # type: ignore[arg-type]
    prep = split_preprocess(preprocess)
    evaluator = Evaluator(encoder, runtime, prep.normalize, progress=progress and ctx.is_main)
    accuracies: dict[str, float] = {}
    for split in (dataset, f"{dataset}Val"):
        task = get_dataset(split, prep.pil, data_location, batch_size=batch_size, num_workers=num_workers)
        shard = _shard(task, ctx)
        n = len(shard.test_dataset)  # type: ignore[arg-type]
        correct = 0
        if n:
            eval_split = EvalSplit(split, shard, "stream", batch_size=batch_size, num_workers=num_workers,
                                   pin_memory=ctx.device.type == "cuda")
            correct = round(evaluator.top1(head, eval_split, f"{split} (eval)") * n)
        total_correct, total = ctx.all_reduce_sum([correct, n]).tolist()
        if total == 0:
            raise ValueError(f"evaluation split {split} is empty")
        accuracies[split] = total_correct / total
    encoder.train(False)
    return accuracies
