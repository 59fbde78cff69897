"""Task arithmetic family: the pre-trained model itself, weight averaging, Task Arithmetic and TIES-Merging (SPEC §3).

Each class only wires its parameters to the pure tensor functions of ``sparsify`` and ``thresholds``; the streaming
engine feeds it one entry at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..lora import factored_mean, factored_sum
from ..parallel import map_entries
from ..registry import AblationRow, EntryMerge, MergeMethod, register
from ..sparsify import TiesAggregation, elect_sign, keep_top, ties_merge
from ..task_vectors import ELEMENTWISE_BLOCK_BYTES, TaskEntry, TaskVectors
from ..thresholds import task_thresholds
from ..tsv import LowRankFactors


def _trimmed(entry: TaskEntry, thresholds: list[float | None]) -> Tensor:
    return torch.stack([keep_top(d, t) for d, t in zip(entry.deltas(), thresholds, strict=True)])


@register
@dataclass
class ZeroShot(MergeMethod):
    """The pre-trained model itself: τMT = 0."""

    name: ClassVar[str] = "zeroshot"
    label: ClassVar[str] = "Zero-shot"
    reference: ClassVar[str] = "the pre-trained model, no merge"
    color: ClassVar[str | None] = "#7f7f7f"
    display_order: ClassVar[int | None] = 10
    demo_row: ClassVar[int | None] = 10
    default_alpha: ClassVar[float] = 0.0
    uses_finetuned: ClassVar[bool] = False

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge()  # no τMT entry: every entry of the merged model is θ0's


@dataclass
class _TopKSum(MergeMethod):
    k: float = 100.0

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return True  # the top-k thresholds are whole-model statistics from prepare

    def __post_init__(self) -> None:
        if not 0 < self.k <= 100:
            raise ValueError(f"{self.name}: k={self.k} is outside (0, 100]; k is the percentage of each task "
                             "vector's largest-magnitude entries kept (100 keeps them all)")

    def run_name(self) -> str:
        return f"{self.name}_k{self.k:g}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress, workers=workers)

    def merges_factors(self) -> bool:
        return self.k == 100  # trimming to the top-k% needs the values

    def _sum(self, entry: TaskEntry) -> Tensor:
        """Σ of the trimmed task vectors, accumulated task by task: no [T, ...] stack is built."""
        total: Tensor | None = None
        for delta, threshold in zip(entry.each_delta(), self._thresholds, strict=True):
            trimmed = keep_top(delta, threshold)
            total = trimmed if total is None else total.add_(trimmed)
        assert total is not None  # a TaskVectors has at least one fine-tuned checkpoint
        return total


@register
@dataclass
class Average(_TopKSum):
    """Weight averaging: θ0 + mean(τi), i.e. Σ τi at α = 1/T (the returned τMT is already the mean)."""

    name: ClassVar[str] = "average"
    label: ClassVar[str] = "Weight averaging"
    reference: ClassVar[str] = "Wortsman et al., Model soups, ICML 2022"
    color: ClassVar[str | None] = "#bcbd22"
    display_order: ClassVar[int | None] = 20
    demo_row: ClassVar[int | None] = 20

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self._sum(entry) / entry.num_tasks)

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        return factored_mean(entry.updates, entry.num_tasks, entry.device)


@register
@dataclass
class TaskArithmetic(_TopKSum):
    """Task Arithmetic: τMT = Σ τi (optionally each trimmed to its top-k%)."""

    name: ClassVar[str] = "sum"
    label: ClassVar[str] = "Task Arithmetic"
    reference: ClassVar[str] = "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023"
    color: ClassVar[str | None] = "#1f77b4"
    display_order: ClassVar[int | None] = 30
    demo_row: ClassVar[int | None] = 30
    ablation: ClassVar[AblationRow | None] = AblationRow(0, "Task Arithmetic", low_rank=False,
                                                         interference_reduction=False)
    spectrum_compared: ClassVar[bool] = True
    alpha_grid_max: ClassVar[float | None] = 1.0

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self._sum(entry))

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        return factored_sum(entry.updates, device=entry.device)


@register
@dataclass
class Ties(MergeMethod):
    """TIES-Merging: trim to top-k%, elect signs, disjoint mean (or sum / max) of agreeing values."""

    name: ClassVar[str] = "ties"
    label: ClassVar[str] = "TIES-Merging"
    reference: ClassVar[str] = "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023"
    color: ClassVar[str | None] = "#ff7f0e"
    display_order: ClassVar[int | None] = 40
    demo_row: ClassVar[int | None] = 40
    alpha_grid_max: ClassVar[float | None] = 1.0
    k: float = 20.0
    agg: TiesAggregation = "mean"

    def __post_init__(self) -> None:
        if not 0 < self.k <= 100:
            raise ValueError(f"{self.name}: k={self.k} is outside (0, 100]; k is the percentage of each task "
                             "vector's largest-magnitude entries kept (100 keeps them all)")

    def run_name(self) -> str:
        return f"{self.name}_k{self.k:g}_{self.agg}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress, workers=workers)
        # Elected signs of exactly 0 take the sign of the sum of all elected signs (published rule):
        # a whole-model statistic, hence this extra pass.
        def sign_sum(entry: TaskEntry) -> float:
            if not entry.changed:
                return 0.0
            return sum(float(elect_sign(_trimmed(block, self._thresholds)).sum())
                       for block in entry.row_blocks(ELEMENTWISE_BLOCK_BYTES))

        # Entries side by side: each sum is an integer, so the total does not depend on the order.
        total = sum(part for _, part in map_entries(sign_sum, tasks, "TIES signs", progress=progress,
                                                             workers=workers))
        # Sums of ±1 and 0: integer-valued, so the sum over processes is exact (and the same as in one process).
        total = float(tasks.reduce_sum(torch.tensor(total, dtype=torch.float64)))
        self._majority_sign = float(np.sign(total))

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=ties_merge(entry.deltas(), self._thresholds, self._majority_sign, self.agg))

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return True  # thresholds and the majority sign come from prepare
