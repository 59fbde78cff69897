"""The image encoder of the published checkpoints: an open_clip CLIP model without its text transformer.

Its state-dict keys are those of the published files (SPEC §1): ``model.visual.*`` plus the text-side leftovers
``model.token_embedding.weight``, ``model.positional_embedding``, ``model.ln_final.*``, ``model.text_projection``
and ``model.logit_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..utils.errors import UserError
from .factory import ModelSpec, Transform, create_clip

__all__ = ["EncoderWeightsError", "ImageEncoder", "build_image_encoder", "load_encoder_weights"]


class EncoderWeightsError(UserError, ValueError):
    """A checkpoint's keys or shapes do not fit the configured model architecture."""


class ImageEncoder(torch.nn.Module):
    """``model.encode_image`` of a CLIP model whose text ``transformer`` has been deleted (published layout)."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        if hasattr(clip, "transformer"):
            delattr(clip, "transformer")
        self.model = clip

    def forward(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)


def _preview(items: list[str], limit: int = 8) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "")


def load_encoder_weights(encoder: torch.nn.Module, state: Mapping[str, Tensor], source: str | Path,
                         model_name: str = "") -> None:
    """Copy ``state`` into ``encoder``, explaining key / shape mismatches (wrong ``model=`` for the checkpoint)."""
    own = encoder.state_dict()
    keys = set(state.keys())
    missing = sorted(set(own) - keys)
    unexpected = sorted(keys - set(own))
    shapes = [f"{k}: {list(state[k].shape)} in the file, {list(own[k].shape)} in the model"
              for k in sorted(set(own) & keys) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit the image encoder of model {model_name!r}:"]
        if missing:
            lines.append(f"  {len(missing)} keys missing from the file: {_preview(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys in the file: {_preview(unexpected)}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatches: {_preview(shapes, 4)}")
        lines.append("Is `model=` the architecture these checkpoints were fine-tuned from?")
        raise EncoderWeightsError("\n".join(lines))
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key])


def build_image_encoder(spec: ModelSpec, weights: Mapping[str, Tensor] | None = None,
                        source: str | Path = "the zero-shot checkpoint") -> tuple[ImageEncoder, Transform]:
    """The image encoder of ``spec`` filled from ``weights`` (a published-layout state dict), and its preprocess.

    Without ``weights`` the encoder gets ``spec.pretrained``'s weights (open_clip tag or local file).
    """
    clip, preprocess = create_clip(spec, load_pretrained=weights is None)
    encoder = ImageEncoder(clip)
    if weights is not None:
        load_encoder_weights(encoder, weights, source, spec.name)
    return encoder.eval(), preprocess
