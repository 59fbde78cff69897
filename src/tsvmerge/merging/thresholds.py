"""Top-k% magnitude thresholds over a whole model, computed while streaming its entries (radix selection).

The published threshold is the (d − ⌊d·k/100⌋)-th smallest |τ| over the task's flat vector of d numbers
(:func:`~.sparsify.topk_threshold`). Flattening a task vector takes a model's worth of memory; instead, the bit
patterns of non-negative float32 numbers, which sort like the numbers, are counted in two passes: the high 16 bits
(65,536 buckets) locate the threshold's bucket, the low 16 bits within it the exact value. Counts add up across
processes, so a merge split over several processes gets the same thresholds from one sum per pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .parallel import map_entries
from .task_vectors import ELEMENTWISE_BLOCK_BYTES, TaskEntry, TaskVectors

__all__ = ["kth_smallest_bucket", "task_thresholds"]

_BUCKETS = 1 << 16
_CHUNK = 1 << 24  # numbers counted at once: bounds the int64 bucket indices' memory


def _bit_patterns(magnitudes: Tensor) -> Tensor:
    """int32 patterns of float32 magnitudes (≥ 0): ordered like the magnitudes."""
    return magnitudes.to(torch.float32).contiguous().flatten().view(torch.int32)


def _count(buckets: Tensor) -> Tensor:
    counts = torch.zeros(_BUCKETS, dtype=torch.int64, device=buckets.device)
    for chunk in buckets.split(_CHUNK):
        counts += torch.bincount(chunk.long(), minlength=_BUCKETS)
    return counts


def high_counts(magnitudes: Tensor) -> Tensor:
    """How many numbers fall in each high-16-bit bucket."""
    return _count(_bit_patterns(magnitudes) >> 16)


def low_counts(magnitudes: Tensor, high: int) -> Tensor:
    """How many numbers of high bucket ``high`` fall in each low-16-bit bucket."""
    bits = _bit_patterns(magnitudes)
    return _count(bits[(bits >> 16) == high] & 0xFFFF)


def kth_smallest_bucket(counts: Tensor, rank: int) -> tuple[int, int]:
    """The bucket holding the ``rank``-th smallest number (1-based), and that number's rank within the bucket."""
    cumulative = counts.cpu().cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor([rank]))[0])
    before = int(cumulative[bucket - 1]) if bucket else 0
    return bucket, rank - before


def task_thresholds(tasks: TaskVectors, k_percent: float, *, progress: bool = False,
                    workers: int | None = None) -> list[float | None]:
    """Each task's top-k% threshold over its whole flat vector, equal to ``topk_threshold`` of the flattening.

    Integer entries count as zeros (they have no task vector), as in the published flattening of the whole state
    dict. None means keep everything (k = 100).
    """
    if not 0 < k_percent <= 100:
        raise ValueError(f"top-k percentage must be in (0, 100], got {k_percent}")
    if k_percent == 100:
        return [None] * tasks.num_tasks
    T = tasks.num_tasks
    total = sum(tasks.shape(key).numel() for key in tasks.keys)
    fixed_zeros = sum(tasks.shape(key).numel() for key in tasks.keys if not tasks.is_mergeable(key))
    rank = total - int(total * k_percent / 100)

    zero = torch.zeros(1)

    def counted(label: str, count: Callable[[Tensor, int], Tensor]) -> Tensor:
        """One pass over this process's entries, summed over the processes; zeros counted without reading."""

        def entry_counts(entry: TaskEntry) -> Tensor:
            counts = torch.zeros(T, _BUCKETS, dtype=torch.int64)
            blocks = entry.row_blocks(ELEMENTWISE_BLOCK_BYTES)  # vocabulary-sized entries: a block at a time
            for task in range(T):
                if task in entry.changed:
                    for block in blocks:
                        counts[task] += count(block.delta(task).abs(), task).cpu()
                else:  # τ = 0 over the whole entry
                    counts[task] += count(zero, task) * entry.pretrained.numel()
            return counts

        counts = torch.zeros(T, _BUCKETS, dtype=torch.int64)
        # Entries are counted side by side (integer counts: the order of the sums does not matter).
        for _, entry_count in map_entries(entry_counts, tasks, label, progress=progress, workers=workers):
            counts += entry_count
        counts = tasks.reduce_sum(counts)
        for task in range(T):
            counts[task] += count(zero, task) * fixed_zeros
        return counts

    highs = counted("top-k thresholds (1/2)", lambda magnitudes, task: high_counts(magnitudes))
    located = [kth_smallest_bucket(highs[task], rank) for task in range(T)]
    lows = counted("top-k thresholds (2/2)", lambda magnitudes, task: low_counts(magnitudes, located[task][0]))
    thresholds: list[float | None] = []
    for task, (high, rank_in_bucket) in enumerate(located):
        low, _ = kth_smallest_bucket(lows[task], rank_in_bucket)
        pattern = torch.tensor([(high << 16) | low], dtype=torch.int32)
        thresholds.append(float(pattern.view(torch.float32)[0]))
    return thresholds
