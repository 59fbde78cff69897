"""Splitting a CLIP evaluation preprocess into a cacheable uint8 part and an on-device normalization.

open_clip's evaluation transform is ``Resize, CenterCrop, (RGB), ToTensor, Normalize``. Caching its float output
costs 4 bytes per pixel; stopping before ``ToTensor`` (``PILToTensor`` instead) gives the very same pixels as uint8,
and ``x.float() / 255`` then ``(x - mean) / std`` on the device reproduces ``ToTensor`` + ``Normalize`` exactly.
Transforms of any other shape are used whole (float tensors cached, identity on the device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import transforms as T

__all__ = ["EvalPreprocess", "InputNormalizer", "split_preprocess"]

_TO_TENSOR = {"ToTensor", "MaybeToTensor"}


class InputNormalizer:
    """What remains of the preprocess on the device: uint8 -> float in [0, 1] -> (x - mean) / std."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, images: Tensor, device: torch.device) -> Tensor:
        images = images.to(device, non_blocking=True)
        owned = images.dtype == torch.uint8  # a fresh float tensor below: safe to modify in place
        images = images.float().div_(255) if owned else images.float()
        if self.mean is None or self.std is None:
            return images
        if device not in self._cache:
            shape = (1, len(self.mean), 1, 1)
            self._cache[device] = (torch.tensor(self.mean, device=device).view(shape),
                                   torch.tensor(self.std, device=device).view(shape))
        mean, std = self._cache[device]
        return images.sub_(mean).div_(std) if owned else (images - mean) / std

    def __repr__(self) -> str:
        return f"InputNormalizer(mean={self.mean}, std={self.std})"


@dataclass
class EvalPreprocess:
    """``pil``: what datasets apply (ends with uint8 tensors when split); ``normalize``: what the device applies."""

    pil: Callable[[Any], Any]
    normalize: InputNormalizer
    split: bool


def split_preprocess(preprocess: Callable[[Any], Any]) -> EvalPreprocess:
    steps = list(getattr(preprocess, "transforms", []))
    if (len(steps) >= 2 and type(steps[-2]).__name__ in _TO_TENSOR and isinstance(steps[-1], T.Normalize)):
        norm = steps[-1]
        mean = tuple(float(m) for m in torch.as_tensor(norm.mean).flatten())
        std = tuple(float(s) for s in torch.as_tensor(norm.std).flatten())
        return EvalPreprocess(T.Compose([*steps[:-2], T.PILToTensor()]), InputNormalizer(mean, std), True)
    return EvalPreprocess(preprocess, InputNormalizer(None, None), False)
