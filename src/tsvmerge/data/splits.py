"""The seeded train/validation split of datasets without their own validation split (SPEC §4).

Same arithmetic as the published ``split_train_into_train_val``, so ``<Name>Val`` picks the very images the published
checkpoints were validated on:

    val_size   = min(int(len(train) * val_fraction), max_val_samples)     # 10%, at most 5000
    train_part, val_part = torch.utils.data.random_split(
        train, [len(train) - val_size, val_size], generator=torch.Generator().manual_seed(seed))   # seed 0

(MNIST: 60000 images -> 55000 / 5000, and the first training index is 36044.)
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, random_split

from .errors import DatasetTooSmallError

VAL_FRACTION = 0.1
MAX_VAL_SAMPLES = 5000
SEED = 0


def val_size(n: int, val_fraction: float = VAL_FRACTION, max_val_samples: int | None = MAX_VAL_SAMPLES, *,
             name: str = "the dataset") -> int:
    """Number of validation images carved out of a training split of ``n`` images (of dataset ``name``)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    size = int(n * val_fraction)
    if max_val_samples is not None:
        size = min(size, max_val_samples)
    if not 0 < size < n:
        raise DatasetTooSmallError(
            f"{name} has only {n} training image(s): too few to carve out its validation split "
            f"(val_fraction={val_fraction} of them; at least {_smallest_splittable(val_fraction)} images are needed). "
            "Is the dataset complete? Prepare it again under data_location (docs/data.md)."
        )
    return size


def _smallest_splittable(val_fraction: float) -> int:
    """The fewest training images from which ``val_fraction`` leaves at least one validation image."""
    n = 2
    while int(n * val_fraction) < 1:
        n += 1
    return n


def split_train_val(
    train: Dataset,
    val_fraction: float = VAL_FRACTION,
    max_val_samples: int | None = MAX_VAL_SAMPLES,
    seed: int = SEED,
    *,
    name: str = "the dataset",
) -> tuple[Subset, Subset]:
    """Deterministically split ``train`` into (remaining train part, validation part); ``name`` for messages."""
    n = len(train)  # type: ignore[arg-type]
    size = val_size(n, val_fraction, max_val_samples, name=name)
    train_part, val_part = random_split(train, [n - size, size], generator=torch.Generator().manual_seed(seed))
    return train_part, val_part
