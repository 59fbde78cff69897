"""Resolving the user's ``device`` choice (auto | cpu | cuda[:i]), making a GPU the current one, and choosing the
autocast precision a GPU can run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

__all__ = ["activate_device", "autocast_precision", "bf16_supported", "device_scope", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error, not a silent CPU run."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={choice!r} was requested but CUDA is not available; use device=cpu or auto")
    return device


def activate_device(device: torch.device | str) -> torch.device:
    """Initialize CUDA and make ``device`` this thread's current GPU; return it with its index (``cuda`` ->
    ``cuda:<current>``). CPU devices are returned unchanged and nothing is initialized.

    Work that names no GPU (pinned host memory, a DataLoader's pin-memory thread, ``torch.cuda.*`` statistics
    without an index) runs on the *current* GPU, which is GPU 0 until it is set: without this call a process
    working on ``cuda:1`` also opens a context on GPU 0. Call it once near the start of a process (the command
    line, a rank) and pass the returned device on; :func:`device_scope` does the same for a block only.
    """
    device = _initialized(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def device_scope(device: torch.device | str) -> Iterator[torch.device]:
    """:func:`activate_device` for the duration of a block: the previously current GPU is current again after it
    (without opening a context on it if it had none, as ``torch.cuda.device`` does)."""
    device = _initialized(device)
    if device.type != "cuda":
        yield device
        return
    with torch.cuda.device(device):
        yield device


def _initialized(device: torch.device | str) -> torch.device:
    """``device`` with its index after CUDA is initialized (its allocator statistics fail with "did you call
    init?" until then), or a clear error when that GPU does not exist."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was requested but CUDA is not available")
    torch.cuda.init()
    index = torch.cuda.current_device() if device.index is None else device.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"device cuda:{index} does not exist: {count} GPU(s) are visible (cuda:0 .. "
                           f"cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return torch.device("cuda", index)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: what ``torch.cuda.is_bf16_supported(including_emulation=False)``
    answers, but for this GPU rather than the current one. Older GPUs only emulate it, slower than fp16."""
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast_precision(device: torch.device, precision: str, *, announce: bool = True) -> str:
    """The autocast precision to use: ``precision``, except ``bf16`` on a GPU without native bfloat16, which falls
    back to ``fp16`` (logged once per call when ``announce``; training then needs a gradient scaler)."""
    if device.type != "cuda" or precision != "bf16" or bf16_supported(device):
        return precision
    if announce:
        name = torch.cuda.get_device_name(device)
        log.warning("%s (%s) has no native bfloat16: running fp16 autocast instead of bf16", device, name)
    return "fp16"
