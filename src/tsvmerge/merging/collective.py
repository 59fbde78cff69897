"""Sums across the processes of a multi-process merge (``torchrun``), or the identity in a single process.

A merge split over N processes computes whole-model statistics (top-k% thresholds, TIES' majority sign) from each
process's own entries, then sums them here: every process ends with the statistics of the whole model.

When one process fails, the others fail too, as a consequence (a collective loses its peer, the launcher stops
them, the output's temporary folder is gone). :meth:`Collective.first_failure` lets the processes agree, through the
process group's store, on which failure is the run's: only that process reports its error.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..utils.entry_point import Terminated

__all__ = ["FAILURE_KEY", "Collective", "ProcessGroupCollective", "SingleProcess", "lost_peer"]

#: The store key where the first process to fail records ``"<rank> <exit status>"``.
FAILURE_KEY = "tsvmerge/failed"
#: How long a process that failed as a consequence waits for the cause to be recorded.
PEER_WAIT_SECONDS = 5.0

_PEER_LOSS_MARKERS = ("Connection closed by peer", "Connection reset by peer", "remote worker",
                      "NCCL communicator was aborted", "Broken pipe", "gloo/transport")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is what a process sees when a *peer* failed (connection lost, collective aborted)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(marker in text for marker in _PEER_LOSS_MARKERS)


class Collective:
    """The reductions a merge needs; a single process is its own whole world."""

    rank: int = 0
    world_size: int = 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over all processes (returned; ``tensor`` may be reused)."""
        return tensor

    def barrier(self) -> None:
        """Wait until every process got here."""

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text``, on every process."""
        assert text is not None
        return text

    def first_failure(self, error: BaseException, status: int) -> tuple[int, int] | None:
        """Settle which process reports a failure, so that a run prints one error, not one per process.

        Returns None when this process is the first to fail (its ``status`` is then recorded for the others), else
        ``(rank, exit status)`` of the process that failed first: this one should then exit quietly with that
        status. A single process is always the first.
        """
        return None


class SingleProcess(Collective):
    """One process merges every entry."""


@dataclass
class ProcessGroupCollective(Collective):
    """The default ``torch.distributed`` process group (gloo on CPUs, NCCL on GPUs); ``device`` is where its
    collectives run (the rank's GPU for NCCL, the CPU for gloo)."""

    device: torch.device
    _store: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # Kept from the start: the group (and its store handle) may be destroyed before a failure is settled. Under
        # torchrun the store lives in the launcher's agent, so it outlives any worker.
        try:
            self._store = dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):
            self._store = None

    def first_failure(self, error: BaseException, status: int) -> tuple[int, int] | None:
        if self._store is None:
            return None
        try:
            if self._consequence(error):
                recorded = self._wait_for_failure(PEER_WAIT_SECONDS)
                if recorded is not None:
                    return recorded
            value = f"{self.rank} {status}"
            current = self._store.compare_set(FAILURE_KEY, "", value)  # set only if no process recorded one yet
            recorded = _parse_failure(current)
        except Exception:  # noqa: BLE001 - the store is gone (its host failed): this process reports its own error
            return None
        if recorded is None or recorded[0] == self.rank:
            return None
        return recorded

    def _consequence(self, error: BaseException) -> bool:
        """Whether ``error`` is likely a consequence of another process's failure, recorded soon if not yet:
        a lost peer, the launcher's SIGTERM, or (ranks other than 0) a missing file, rank 0 having removed the
        output's temporary folder on its way out."""
        if lost_peer(error) or isinstance(error, Terminated):
            return True
        return self.rank != 0 and isinstance(error, FileNotFoundError) and error.errno == errno.ENOENT

    def _wait_for_failure(self, seconds: float) -> tuple[int, int] | None:
        deadline = time.monotonic() + seconds
        while True:
            if self._store.check([FAILURE_KEY]):
                return _parse_failure(self._store.get(FAILURE_KEY))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        # Integer counts stay exact; floats are reduced in float64 (sums of integer-valued floats stay exact).
        work = tensor.to(self.device, torch.float64 if tensor.is_floating_point() else torch.int64)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device, tensor.dtype)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast_text(self, text: str | None) -> str:
        import torch.distributed as dist

        data = (text or "").encode() if self.rank == 0 else b""
        length = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(length, src=0)
        buffer = torch.zeros(int(length), dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().tolist()).decode()


def _parse_failure(value: bytes | str) -> tuple[int, int] | None:
    """``(rank, status)`` from a :data:`FAILURE_KEY` value; None if it is not one."""
    text = value.decode() if isinstance(value, bytes) else value
    try:
        rank, status = (int(part) for part in text.split())
    except ValueError:
        return None
    return rank, status
