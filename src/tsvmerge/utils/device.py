"""Resolving the user's ``device`` choice (auto | cpu | cuda[:i])."""

from __future__ import annotations

import torch


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error, not a silent CPU run."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={choice!r} was requested but CUDA is not available; use device=cpu or auto")
    return device
