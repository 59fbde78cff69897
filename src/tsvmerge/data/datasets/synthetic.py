"""Eight small synthetic 10-class image tasks (32×32 RGB), generated offline and deterministically, for the demo.

The demo pre-trains a tiny CLIP on these images, fine-tunes it once per task and merges the fine-tuned models; that
only says something about merging if the tasks *conflict*: each one reads a different property of the same kind of
picture (a coloured object on a dark noisy background) and must ignore the properties the others read. So every
image carries random nuisances (foreground colour, which object, position, scale, background colour, pixel noise,
distractor specks) except the one property that is the task's label:

- ``Digits`` / ``Letters``: which glyph (0-9 / A-J, Pillow's bundled font) is drawn;
- ``Shapes``: which of 10 filled shapes;
- ``Colors``: the object's colour (10 named colours; backgrounds are dark and only faintly tinted);
- ``Stripes``: the orientation of a grating patch (0°, 18°, ..., 162°, counter-clockwise from horizontal);
- ``Counting``: how many dots (1-10);
- ``Position``: which cell of a 5 columns × 2 rows grid the object's centre lies in (row-major, top row first);
- ``Sizes``: which of 10 size bins the object's height falls in.

Splits ``train`` / ``val`` / ``test`` (and ``pretrain``, for contrastive pre-training only) are class-balanced and
seeded from ``zlib.crc32`` of (task, split), so every process builds the same bytes in any order. They are generated
on first access and cached in ``<data_location>/synthetic/<Name>/<split>.npz`` (written atomically: DDP ranks may
generate concurrently); a cache of another :data:`GENERATOR_VERSION` is regenerated.

The pictures themselves are drawn by :mod:`tsvmerge.data.datasets.synthetic_images`; this module defines the tasks
(class names, templates), the splits and their seeds, the cache and the dataset sources.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..transforms import Transform
from .base import DatasetSource

from .synthetic_images import (
    _DIGITS,
    _LETTERS,
    _SHAPES,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    NUM_CLASSES,
    draw_task_images,
)

SYNTHETIC_TASKS: tuple[str, ...] = ("Digits", "Letters", "Shapes", "Colors", "Stripes", "Counting", "Position", "Sizes")
SPLIT_SIZES: Mapping[str, int] = MappingProxyType({"train": 1000, "val": 200, "test": 500, "pretrain": 1000})

SYNTHETIC_CLASSNAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Digits": tuple(_DIGITS),
        "Letters": tuple(_LETTERS),
        "Shapes": _SHAPES,
        "Colors": ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "gray"),
        "Stripes": tuple(f"{18 * k} degrees" for k in range(NUM_CLASSES)),
        "Counting": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
        "Position": (
            "top far left", "top left", "top center", "top right", "top far right",
            "bottom far left", "bottom left", "bottom center", "bottom right", "bottom far right",
        ),
        "Sizes": (
            "tiny", "very small", "small", "fairly small", "medium",
            "fairly large", "large", "very large", "giant", "huge",
        ),
    }
)

# Every template names the task's domain, so that the zero-shot heads of different tasks differ.
SYNTHETIC_TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Digits": ("a photo of the digit {}.", "an image of the number {}.", "a rendered digit {}."),
        "Letters": ("a photo of the letter {}.", "an image of the capital letter {}.", "a rendered letter {}."),
        "Shapes": ("a photo of a {} shape.", "an image of a {}-shaped object.", "a drawing of a {} shape."),
        "Colors": ("a photo of a {} colored object.", "an image of something in the color {}.", "a shape painted {}."),
        "Stripes": (
            "a photo of stripes at {}.", "an image of a striped pattern oriented at {}.", "a grating tilted by {}.",
        ),
        "Counting": ("a photo of {} dots.", "an image showing {} dots.", "a picture with a count of {} dots."),
        "Position": (
            "a photo of an object in the {} of the image.", "an image with a shape at the {}.",
            "an object located at the {} position.",
        ),
        "Sizes": ("a photo of an object of {} size.", "an image of a {} sized shape.", "a shape drawn at {} size."),
    }
)


class SyntheticDataset(Dataset):
    """One split held in memory as uint8 arrays; items are ``(transform(RGB PIL image), int label)``."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, classes: Iterable[str], transform: Transform | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.targets = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = Image.fromarray(self.images[index])  # uint8 [32, 32, 3] -> RGB
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


# ---------------------------------------------------------------------------------------------------------------------
# Cache


def cache_path(root: str | os.PathLike[str], name: str, split: str) -> Path:
    """Where ``split`` of task ``name`` is cached under the data location ``root``."""
    return Path(root).expanduser() / "synthetic" / name / f"{split}.npz"


def load_split(root: str | os.PathLike[str], name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 32, 32, 3], labels int64 [N])`` of ``split``, read from the cache or generated into it."""
    _validate(name, split)
    path = cache_path(root, name, split)
    cached = _read(path, split)
    if cached is not None:
        return cached
    images, labels = generate_split(name, split)
    write_arrays_atomic(path, images=images, labels=labels, version=np.int64(GENERATOR_VERSION))
    return images, labels


def generate_all(
    root: str | os.PathLike[str],
    splits: Iterable[str] = ("train", "val", "test", "pretrain"),
    tasks: Iterable[str] = SYNTHETIC_TASKS,
    disable: bool = False,
) -> None:
    """Build (or check) the cache of every task and split, e.g. once before starting several processes."""
    splits = tuple(splits)
    for name in tqdm(tuple(tasks), desc="synthetic tasks", disable=disable):
        for split in splits:
            load_split(root, name, split)


def _validate(name: str, split: str) -> None:
    if name not in SYNTHETIC_TASKS:
        raise ValueError(f"Unknown synthetic task {name!r}; known: {', '.join(SYNTHETIC_TASKS)}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown split {split!r}; known: {', '.join(SPLIT_SIZES)}")


def _read(path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None if absent, unreadable, of another generator version or of the wrong size."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != GENERATOR_VERSION:
                return None
            images, labels = data["images"], data["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    n = SPLIT_SIZES[split]
    if images.shape != (n, IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8 or labels.shape != (n,):
        return None
    return images, labels.astype(np.int64, copy=False)


def write_arrays_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write to a temporary file next to ``path`` then rename it, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def generate_split(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``split`` of task ``name`` in memory (no cache): same bytes on every call and in every process."""
    _validate(name, split)
    n = SPLIT_SIZES[split]
    rng = np.random.default_rng(zlib.crc32(f"tsvmerge-synthetic/{name}/{split}".encode()))
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    return draw_task_images(name, rng, labels), labels


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def _no_paths(root: Path, split: str) -> list[Path]:
    return []  # nothing has to exist beforehand: the data are generated on first access


def _load(name: str, root: Path, split: str, transform: Transform | None) -> Dataset:
    images, labels = load_split(root, name, split)
    return SyntheticDataset(images, labels, SYNTHETIC_CLASSNAMES[name], transform)


_HINT = (
    "nothing to prepare: the images are generated automatically (deterministically, in a few seconds) on first use "
    "under {location}/synthetic/; tsvmerge.data.datasets.synthetic.generate_all('{location}') pre-builds them."
)

SOURCES: tuple[DatasetSource, ...] = tuple(
    DatasetSource(name, _no_paths, partial(_load, name), _HINT, has_val=True) for name in SYNTHETIC_TASKS
)
