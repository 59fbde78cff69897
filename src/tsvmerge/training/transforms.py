"""The image transform a task is trained on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["train_preprocess"]


def train_preprocess(clip: torch.nn.Module, eval_preprocess: Callable[[Any], Any],
                     augment: bool = True) -> Callable[[Any], Any]:
    """The training transform: open_clip's (``RandomResizedCrop(scale=(0.9, 1))``, as the published
    ``model.train_preprocess``), a custom model's ``train_preprocess``, or the evaluation one (``augment=False``)."""
    if not augment:
        return eval_preprocess
    own = getattr(clip, "train_preprocess", None)
    if own is not None:
        return own
    cfg = getattr(getattr(clip, "visual", None), "preprocess_cfg", None)
    if not cfg:
        return eval_preprocess
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**cfg), is_train=True)
