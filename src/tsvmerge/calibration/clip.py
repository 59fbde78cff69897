"""Calibration of CLIP image encoders: each task's samples drawn from its own dataset split (``main.py``) or read
from a calibration file (``tsvmerge merge --calibration FILE --model NAME``), pushed through the encoder θi."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import get_dataset
from ..merging import MergeMethod, TaskVectors
from ..merging.calibration import CalibrationError
from .passes import Batch, CalibrationRecord, calibrate
from .samples import draw_indices, given_indices, read_image_file, split_batches, stack_images

__all__ = ["calibrate_from_datasets", "calibrate_from_file", "image_shape"]

#: Where each split of a ``<Dataset>Val`` task dataset lives: its held-out validation part is its test split.
_SPLIT_ATTRIBUTE = {"validation": "test_dataset", "train": "train_dataset"}


def image_shape(encoder: nn.Module) -> tuple[int, int, int]:
    """[3, H, W] of the images an open_clip image encoder takes."""
    size = getattr(encoder.model.visual, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return 3, int(height), int(width)


def _forward(prepare: Callable[[Tensor], Tensor]) -> Callable[[nn.Module, Tensor], Any]:
    return lambda module, images: module(prepare(images))


def calibrate_from_datasets(method: MergeMethod, tasks: TaskVectors, encoder: nn.Module, datasets: Sequence[str],
                            preprocess: Any, normalize: Callable[[Tensor, torch.device], Tensor], *,
                            data_location: Path, samples: int | None, seed: int | None,
                            progress: bool = False) -> CalibrationRecord:
    """main.py: each task's samples drawn from the split its method names (``<Dataset>Val``'s validation part or
    its training images), in the model's evaluation preprocessing; labels are never read."""
    spec = method.calibration
    if spec is None:
        raise CalibrationError(f"method {method.name!r} is data-free: calibration.samples does not apply")
    device = next(encoder.parameters()).device
    started = time.perf_counter()
    counts: dict[str, int] = {}
    chosen: dict[int, list[Tensor]] = {}
    for task, name in enumerate(datasets):
        split = getattr(get_dataset(f"{name}Val", preprocess, data_location, batch_size=1, num_workers=0),
                        _SPLIT_ATTRIBUTE[spec.split])
        indices = draw_indices(spec, len(split), samples, seed, f"{name}Val")
        chosen[task] = split_batches(stack_images(split, indices), spec.batch_size)
        counts[name] = len(indices)
    forward = _forward(lambda images: normalize(images, device))
    keys = calibrate(method, tasks, encoder, lambda task: [Batch(b) for b in chosen[task]], forward,
                     progress=progress)
    return CalibrationRecord(samples=counts, seed=spec.seed if seed is None else seed, split=spec.split,
                             source="datasets", statistic=spec.statistic, keys=len(keys),
                             seconds=time.perf_counter() - started)


def calibrate_from_file(method: MergeMethod, tasks: TaskVectors, encoder: nn.Module, path: Path, *,
                        progress: bool = False) -> CalibrationRecord:
    """``tsvmerge merge --calibration FILE``: preprocessed images per task position; the method's draw then
    applies to those images (ESM: a seeded choice of at most 32, which with fewer is all of them, SPEC_ESM E3;
    RegMean: the first ⌈256 / 32⌉·32 in file order, SPEC_REGMEAN R3)."""
    spec = method.calibration
    if spec is None:
        raise CalibrationError(f"method {method.name!r} is data-free: --calibration does not apply")
    started = time.perf_counter()
    images = read_image_file(path, tasks.num_tasks, image_shape(encoder))
    device = next(encoder.parameters()).device
    chosen: dict[int, list[Tensor]] = {}
    counts: dict[str, int] = {}
    for task, value in images.items():
        indices = given_indices(spec, value.shape[0], tasks.names[task])
        chosen[task] = split_batches(value[indices], spec.batch_size)
        counts[tasks.names[task]] = int(indices.numel())
    keys = calibrate(method, tasks, encoder, lambda task: [Batch(b) for b in chosen[task]],
                     _forward(lambda x: x.to(device)), progress=progress)
    return CalibrationRecord(samples=counts, seed=spec.seed if spec.draw == "choice" else None, split=spec.split,
                             source=str(path), statistic=spec.statistic, keys=len(keys),
                             seconds=time.perf_counter() - started)
