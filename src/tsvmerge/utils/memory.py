"""Peak-memory measurement: resident set, anonymous memory, and CUDA allocations.

Memory-mapped checkpoint pages are file-backed (``RssFile``) and can be dropped by the kernel at any
time; what a merge really costs is its anonymous memory (``RssAnon``), which the kernel does not
record a peak for, so a background thread samples it.
"""

from __future__ import annotations

import contextlib
import resource
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from .device import device_scope

_STATUS = Path("/proc/self/status")


def current_rss_anon_bytes() -> int | None:
    """Current anonymous resident memory of this process (Linux only; None elsewhere)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (file-backed pages included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class MemoryReport:
    peak_rss_bytes: int
    peak_rss_anon_bytes: int | None
    peak_cuda_bytes: int | None

    def summary(self) -> str:
        parts = [f"peak RSS {_gib(self.peak_rss_bytes)}"]
        if self.peak_rss_anon_bytes is not None:
            parts.append(f"peak anonymous {_gib(self.peak_rss_anon_bytes)}")
        if self.peak_cuda_bytes is not None:
            parts.append(f"peak CUDA {_gib(self.peak_cuda_bytes)}")
        return ", ".join(parts)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class MemoryMonitor:
    """Context manager sampling RssAnon every ``interval`` seconds (plus CUDA's own peak counter).

    On a GPU, that GPU is the current one inside the block (see :func:`tsvmerge.utils.device.device_scope`) and
    ``device`` holds its index once the block is entered; the previous current GPU is restored on exit.
    """

    def __init__(self, interval: float = 0.02, device: torch.device | str | None = None) -> None:
        self.interval = interval
        self.device = None if device is None else torch.device(device)
        self._stop = threading.Event()
        self._peak_anon: int | None = None
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._scope = contextlib.ExitStack()
        self.report: MemoryReport | None = None

    @property
    def _on_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def _sample(self) -> None:
        while True:
            value = current_rss_anon_bytes()
            if value is not None:
                self._peak_anon = max(self._peak_anon or 0, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "MemoryMonitor":
        if self._on_cuda:
            with contextlib.ExitStack() as stack:  # left as it was if resetting the counter fails
                self.device = stack.enter_context(device_scope(self.device))
                torch.cuda.reset_peak_memory_stats(self.device)
                self._scope = stack.pop_all()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        value = current_rss_anon_bytes()
        if value is not None:
            self._peak_anon = max(self._peak_anon or 0, value)
        cuda_peak = None
        with self._scope:
            if self._on_cuda:
                cuda_peak = torch.cuda.max_memory_allocated(self.device)
        self.report = MemoryReport(peak_rss_bytes(), self._peak_anon, cuda_peak)
