"""Image transforms shared by all loaders: RGB conversion and EMNIST's orientation fix.

Classes rather than lambdas so that DataLoader workers can pickle them under any start method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, ImageOps

Transform = Callable[[Any], Any]


class ToRGB:
    """Convert a PIL image to RGB: CLIP expects 3 channels and several datasets are grayscale (SPEC §5)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class Chain:
    """Apply transforms in order, skipping ``None`` (a missing preprocess leaves PIL images)."""

    def __init__(self, *steps: Transform | None) -> None:
        self.steps = tuple(s for s in steps if s is not None)

    def __call__(self, x: Any) -> Any:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(s) for s in self.steps)})"


class EMNISTOrientation:
    """Rotate by −90° (clockwise) then mirror horizontally, as the published EMNIST loader does after preprocessing.

    EMNIST stores its images transposed; on a square image this composition is exactly the transpose, which turns the
    digits upright. For a CHW tensor: ``torch.rot90(x, k=-1, dims=(1, 2))`` is the clockwise rotation (equal to
    ``torchvision.transforms.functional.rotate(x, -90)`` on square inputs) and ``flip(dims=(2,))`` mirrors the width.
    """

    def __call__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return torch.flip(torch.rot90(x, k=-1, dims=(-2, -1)), dims=(-1,))
        return ImageOps.mirror(x.transpose(Image.Transpose.ROTATE_270))

    def __repr__(self) -> str:
        return "EMNISTOrientation()"
