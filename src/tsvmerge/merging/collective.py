"""Sums across the processes of a multi-process merge (``torchrun``), or the identity in a single process.

A merge split over N processes computes whole-model statistics (top-k% thresholds, TIES' majority sign) from each
process's own entries, then sums them here: every process ends with the statistics of the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Collective", "ProcessGroupCollective", "SingleProcess"]


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


class SingleProcess(Collective):
    """One process merges every entry."""


@dataclass
class ProcessGroupCollective(Collective):
    """The default ``torch.distributed`` process group (gloo on CPUs, NCCL on GPUs); ``device`` is where its
    collectives run (the rank's GPU for NCCL, the CPU for gloo)."""

    device: torch.device

    def __post_init__(self) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

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
