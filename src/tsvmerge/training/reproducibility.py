"""Reproducible training across ranks: torch's random streams seeded for a block, and a fingerprint of a model's
weights that is equal on every rank iff the DDP replicas are bitwise identical."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

__all__ = ["seeded", "weights_fingerprint"]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of the module's state dict (keys in sorted order, raw bytes): equal on every rank iff the DDP
    replicas are bitwise identical."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's random streams (the CPU's, and ``device``'s on a GPU) seeded with ``seed`` inside the block, and as
    they were after it."""
    gpus = [device.index] if device.type == "cuda" and device.index is not None else []
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        for index in gpus:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
