"""Which samples each task calibrates on: drawn from its own dataset split (seeded), or read from a calibration
file of already-preprocessed inputs.

Draws (SPEC_ESM E3, SPEC_REGMEAN R3): ``numpy.random.RandomState(seed).choice(len(split), n, replace=False)`` for
ESM (the first n entries of that seed's permutation), the first n of ``RandomState(seed).permutation(len(split))``
rounded up to whole batches for RegMean. One fresh generator per task, the same seed for every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..checkpoints.state_dict import open_state_dict
from ..merging.calibration import CalibrationError, CalibrationSpec

__all__ = ["draw_indices", "given_indices", "read_image_file", "stack_images", "split_batches"]


def draw_indices(spec: CalibrationSpec, available: int, asked: int | None, seed: int | None, task: str) -> np.ndarray:
    """Indices into a split of ``available`` samples for one task; ``asked`` None: the method's default count
    (capped at the split's size), else exactly that many (more than the split holds is an error)."""
    if asked is not None and asked < 1:
        raise CalibrationError(f"calibration.samples must be at least 1, got {asked}")
    if available == 0:
        raise CalibrationError(f"the {spec.split} split of {task} is empty: nothing to calibrate on")
    if asked is not None and asked > available:
        raise CalibrationError(f"calibration.samples={asked} but the {spec.split} split of {task} holds only "
                               f"{available} samples")
    n = spec.samples_used(available, asked)
    generator = np.random.RandomState(spec.seed if seed is None else seed)
    if spec.draw == "choice":
        return generator.choice(available, size=n, replace=False)
    return generator.permutation(available)[:n]


def given_indices(spec: CalibrationSpec, available: int, task: str) -> Tensor:
    """The method's draw applied to ``available`` samples given in a calibration file: ESM's seeded choice of at
    most its default count (all of them, permuted, when there are fewer; SPEC_ESM E3), RegMean's first whole
    batches in file order (SPEC_REGMEAN R3)."""
    if spec.draw == "choice":
        return torch.as_tensor(draw_indices(spec, available, None, None, task))
    return torch.arange(spec.samples_used(available))


def stack_images(dataset: Dataset, indices: Sequence[int]) -> Tensor:
    """The images (first element of each sample) at ``indices``, stacked; labels are never used."""
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])


def split_batches(samples: Tensor, batch_size: int | None) -> list[Tensor]:
    """``samples`` in batches of ``batch_size`` (None: one batch)."""
    if batch_size is None:
        return [samples]
    return list(samples.split(batch_size))


def read_image_file(path: Path, num_tasks: int, image_shape: Sequence[int]) -> dict[int, Tensor]:
    """A calibration file of preprocessed images: task position ('0', '1', …) → float tensor [n, *image_shape]
    (``.safetensors``, or ``.pt`` read with ``weights_only=True``); every problem is a clear error."""
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist")
    try:
        content = open_state_dict(path)
        tensors = {key: content[key] for key in content}
    except Exception as exc:  # noqa: BLE001 (any unreadable file is one user error)
        raise CalibrationError(f"cannot read calibration file {path}: {exc}") from None
    expected = {str(t) for t in range(num_tasks)}
    missing = sorted(expected - set(tensors), key=int)
    extra = sorted(set(tensors) - expected)
    if missing:
        raise CalibrationError(f"calibration file {path} has no samples for task(s) {', '.join(missing)} (keys are "
                               f"the positions of the fine-tuned checkpoints: 0 … {num_tasks - 1})")
    if extra:
        raise CalibrationError(f"calibration file {path} has key(s) {', '.join(extra[:5])} that name no task (keys are "
                               f"the positions of the fine-tuned checkpoints: 0 … {num_tasks - 1})")
    images = {}
    for task in range(num_tasks):
        value = tensors[str(task)]
        where = f"calibration file {path}, task {task}"
        if not value.is_floating_point():
            raise CalibrationError(f"{where}: expected preprocessed float images, got {value.dtype}")
        if value.ndim != 1 + len(image_shape) or tuple(value.shape[1:]) != tuple(image_shape):
            raise CalibrationError(f"{where}: expected images of shape [n, {', '.join(map(str, image_shape))}] for "
                                   f"this model, got {list(value.shape)}")
        if value.shape[0] == 0:
            raise CalibrationError(f"{where}: zero samples")
        if not bool(torch.isfinite(value).all()):
            raise CalibrationError(f"{where}: holds NaN or infinite values")
        images[task] = value.to(torch.float32)
    return images

