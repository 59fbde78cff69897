"""A small open_clip image encoder (2 layers, 32 px images) in the published layout, and image batches for it."""

from __future__ import annotations

import torch

from tsvmerge.models.encoder import ImageEncoder
from tsvmerge.models.factory import ModelSpec, create_clip

ARCH = "tsvmerge-gpu-test-vit"
EMBED_DIM = 32
IMAGE_SIZE = 32
CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}
SPEC = ModelSpec(name="gpu-test-tiny", arch=ARCH, pretrained=None, open_clip_config=CONFIG)


def tiny_encoder(seed: int = 0) -> ImageEncoder:
    """Random weights drawn from ``seed`` (torch's global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip, _ = create_clip(SPEC)
    return ImageEncoder(clip)


def uint8_images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
