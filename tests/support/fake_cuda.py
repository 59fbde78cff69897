"""A stand-in for ``torch.cuda`` on machines without a GPU: enough of its device bookkeeping (current device,
initialization, allocator statistics) to check, on CPU, how the library drives it.

Like the real one, the fake rejects allocator statistics before CUDA is initialized and keeps a current device that
``set_device`` / ``torch.cuda.device`` change. The ``fake_cuda`` fixture (tests/gpu and tests/training) installs one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch


class FakeCuda:
    def __init__(self, count: int = 2, capability: tuple[int, int] = (9, 0)) -> None:
        self.count = count
        self.capability = capability
        self.current = 0
        self.initialized = False
        self.set_calls: list[int] = []
        self.peak_resets: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        for name, value in {
            "is_available": lambda: True,
            "device_count": lambda: self.count,
            "init": self.init,
            "current_device": lambda: self.current,
            "set_device": self.set_device,
            "device": self.device,
            "get_device_capability": lambda device=None: self.capability,
            "get_device_name": lambda device=None: "Fake GPU",
            "reset_peak_memory_stats": self.reset_peak_memory_stats,
            "max_memory_allocated": lambda device=None: 1234,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)
        return self

    def init(self) -> None:
        self.initialized = True

    def index(self, device: torch.device | int | None) -> int:
        if isinstance(device, int):
            return device
        if device is None or torch.device(device).index is None:
            return self.current
        return torch.device(device).index

    def set_device(self, device: torch.device | int) -> None:
        self.current = self.index(device)
        self.set_calls.append(self.current)

    @contextlib.contextmanager
    def device(self, device: torch.device | int) -> Iterator[None]:
        previous, self.current = self.current, self.index(device)
        try:
            yield
        finally:
            self.current = previous

    def reset_peak_memory_stats(self, device: torch.device | int | None = None) -> None:
        index = self.index(device)
        if not self.initialized:  # what the real allocator answers before CUDA is initialized
            raise RuntimeError(f"Invalid device argument {index}: did you call init?")
        self.peak_resets.append(index)
