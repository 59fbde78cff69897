"""Forward passes over evaluation splits whose preprocessed images are computed once.

An :class:`EvalSplit` yields batches of preprocessed images (uint8 when the preprocess could be split, see
:mod:`tsvmerge.models.preprocess`) and labels:

- ``memory``: the first pass streams the dataset through a DataLoader and keeps the tensors; later passes (every
  further α / λ) only slice them;
- ``disk``: the tensors are written once to ``<cache_dir>/<name>_test_<hash>.pt`` (atomic) and memory-mapped,
  so later runs (other methods) skip preprocessing too;
- ``stream``: a DataLoader pass each time (for splits evaluated once).

:class:`Evaluator` runs the encoder (AMP autocast and channels-last on CUDA) and a head over a split: top-1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.cache import cached_split
from ..data.task_dataset import TaskDataset
from ..models.preprocess import InputNormalizer
from ..utils.device import activate_device, autocast_precision, resolve_device
from .metrics import top1

__all__ = ["CachePolicy", "EvalSplit", "Evaluator", "Runtime"]

CachePolicy = Literal["memory", "disk", "stream"]
Precision = Literal["bf16", "fp16", "fp32"]
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """Where and how forward passes run.

    On a GPU, creating a Runtime makes that GPU the current one (:func:`tsvmerge.utils.device.activate_device`:
    pinned-memory copies and DataLoader pin threads then use it, not GPU 0) and gives ``device`` its index; ``bf16``
    becomes ``fp16`` on GPUs without native bfloat16 (one logged warning).
    """

    device: torch.device
    precision: Precision = "bf16"
    channels_last: bool = True

    def __post_init__(self) -> None:
        self.device = activate_device(self.device)
        self.precision = autocast_precision(self.device, self.precision)  # type: ignore[assignment]

    @classmethod
    def create(cls, device: str = "auto", precision: Precision = "bf16", channels_last: bool = True) -> Runtime:
        return cls(resolve_device(device), precision, channels_last)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 / fp16 autocast on CUDA; CPU always runs float32."""
        if self.on_cuda and self.precision in _AMP_DTYPES:
            return torch.autocast("cuda", dtype=_AMP_DTYPES[self.precision])
        return contextlib.nullcontext()

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device).eval()
        if self.on_cuda and self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def describe(self) -> str:
        if not self.on_cuda:
            return f"{self.device} (float32)"
        amp = self.precision if self.precision in _AMP_DTYPES else "float32"
        return f"{self.device} ({amp}{', channels-last' if self.channels_last else ''})"


class EvalSplit:
    """One evaluation split (``MNIST`` test or ``MNISTVal`` validation) of a :class:`TaskDataset`."""

    def __init__(self, name: str, task: TaskDataset, policy: CachePolicy = "memory",
                 cache_dir: str | Path | None = None, batch_size: int = 128, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        if policy == "disk" and cache_dir is None:
            raise ValueError("the disk cache policy needs a cache_dir")
        self.name = name
        self.task = task
        self.policy = policy
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._images: Tensor | None = None
        self._labels: Tensor | None = None
        self.preprocess_passes = 0  # DataLoader passes over the raw dataset (1 for cached splits)

    def __len__(self) -> int:
        return len(self.task.test_dataset)  # type: ignore[arg-type]

    @property
    def cached(self) -> bool:
        return self._images is not None

    def _loader(self) -> DataLoader:
        self.preprocess_passes += 1
        return DataLoader(self.task.test_dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._images is not None and self._labels is not None:
            yield from self._slices(self._images, self._labels)
            return
        if self.policy == "disk":
            self.preprocess_passes += 1
            stored = cached_split(self.task, "test", self.cache_dir, batch_size=self.batch_size,
                                  num_workers=self.num_workers)
            self._images, self._labels = stored.tensors
            yield from self._slices(self._images, self._labels)
        elif self.policy == "memory":
            yield from self._fill()
        else:
            for images, labels in self._loader():
                yield images, torch.as_tensor(labels)

    def _fill(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Stream the first pass and keep what it produced (kept only once the pass is complete)."""
        n = len(self)
        images: Tensor | None = None
        labels = torch.empty(n, dtype=torch.long)
        start = 0
        for batch_images, batch_labels in self._loader():
            batch_labels = torch.as_tensor(batch_labels)
            if images is None:
                images = torch.empty((n, *batch_images.shape[1:]), dtype=batch_images.dtype)
            stop = start + len(batch_labels)
            images[start:stop] = batch_images
            labels[start:stop] = batch_labels
            start = stop
            yield batch_images, batch_labels
        if images is None or start != n:
            raise ValueError(f"evaluation split {self.name} yielded {start} of its {n} images")
        self._images, self._labels = images, labels

    def _slices(self, images: Tensor, labels: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(labels), self.batch_size):
            batch = images[start:start + self.batch_size]
            if self.pin_memory:
                batch = batch.pin_memory()
            yield batch, labels[start:start + self.batch_size]

    def release(self) -> None:
        """Drop cached tensors (memory / mapped file)."""
        self._images = self._labels = None

    def __repr__(self) -> str:
        return f"EvalSplit({self.name!r}, policy={self.policy!r}, cached={self.cached})"


class Evaluator:
    """Top-1 of ``encoder`` + a head on a split; the encoder's weights are whatever they are at call time."""

    def __init__(self, encoder: torch.nn.Module, runtime: Runtime, normalize: InputNormalizer,
                 progress: bool = True) -> None:
        self.runtime = runtime
        self.encoder = runtime.prepare_module(encoder)
        self.normalize = normalize
        self.progress = progress
        self.forward_passes = 0

    @torch.no_grad()
    def top1(self, head: torch.nn.Module, split: EvalSplit, description: str | None = None) -> float:
        device = self.runtime.device
        head = head.to(device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        total = 0
        bar = tqdm(split.batches(), total=-(-len(split) // split.batch_size), desc=description or split.name,
                   disable=not self.progress, leave=False, unit="batch")
        for images, labels in bar:
            inputs = self.normalize(images, device)
            if self.runtime.on_cuda and self.runtime.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with self.runtime.autocast():
                features = self.encoder(inputs)
            logits = head(features.float())
            correct += (logits.argmax(dim=1) == labels.to(device, non_blocking=True)).sum()
            total += len(labels)
            self.forward_passes += 1
        return top1(int(correct.item()), total)
