"""Task Singular Vectors (SPEC §3): TSV-M, its whitening variant, the two ablations of Table 4, and TSV-C.

Each class only wires its parameters to the pure tensor functions of ``tsv`` and ``interference``; the streaming
engine feeds it one entry at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..entry_rules import EntryRules
from ..interference import interference_per_block, singular_task_interference
from ..lora import factored_mean, factored_svd, factored_task_singular_vectors
from ..registry import AblationRow, EntryMerge, MergeMethod, register
from ..svd import SVDMode
from ..task_vectors import TaskEntry, TaskVectors
from ..tsv import (
    LowRankFactors,
    Orthogonalization,
    components_per_task,
    mean_of_tasks,
    orthogonalize,
    task_singular_vectors,
    tsv_compress_matrix,
)

#: The paper of every method of this module.
TSV_REFERENCE = "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, CVPR 2025"


@dataclass
class _TaskSingularVectorsMerge(MergeMethod):
    """TSV-M family: SVD-based merge of matrix entries, mean of the others."""

    alpha_grid_max: ClassVar[float | None] = 3.0
    uses_entry_rules: ClassVar[bool] = True
    orthogonalization: ClassVar[Orthogonalization] = "procrustes"
    full_rank: ClassVar[bool] = False
    svd: SVDMode = "exact"
    report_sti: bool = False

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._sti: dict[str, dict[str, float]] = {}

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return not entry.uses_svd()  # averaged entries

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        rows, cols = entry.shape
        k = min(rows, cols) if self.full_rank else components_per_task(rows, cols, entry.num_tasks)
        tsv = task_singular_vectors(entry.deltas(entry.changed), k, "full" if self.full_rank else self.svd,
                                    num_tasks=entry.num_tasks, all_nonzero=True)
        merged = orthogonalize(tsv, self.orthogonalization, approximate=self.svd == "randomized")
        if self.report_sti:
            self._sti[entry.key] = {"before": singular_task_interference(tsv),
                                    "after": singular_task_interference(merged)}
        return EntryMerge(task_vector=merged.reconstruct())

    def merges_factors(self) -> bool:
        return True

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        if not entry.uses_svd():
            return factored_mean(entry.updates, entry.num_tasks, entry.device)
        rows, cols = entry.shape
        k = min(rows, cols) if self.full_rank else components_per_task(rows, cols, entry.num_tasks)
        tsv = factored_task_singular_vectors(entry.updates, k, entry.device)
        # thin concatenations (T·r columns at most): the exact polar factors cost little
        merged = orthogonalize(tsv, self.orthogonalization)
        if self.report_sti:
            self._sti[entry.key] = {"before": singular_task_interference(tsv),
                                    "after": singular_task_interference(merged)}
        return LowRankFactors(merged.U, merged.s, merged.V)

    def finalize(self, tasks: TaskVectors) -> dict[str, Any]:
        if not self.report_sti:
            return {}
        per_entry = {key: self._sti[key] for key in sorted(self._sti)}
        return {"sti": per_entry, "sti_per_block": interference_per_block(per_entry)}


@register
@dataclass
class TSVM(_TaskSingularVectorsMerge):
    """TSV-M (Algorithm 1): top 1/T singular components per task, Procrustes-decorrelated."""

    name: ClassVar[str] = "TSVM"
    label: ClassVar[str] = "TSV-M"
    reference: ClassVar[str] = TSV_REFERENCE
    color: ClassVar[str | None] = "#d62728"
    display_order: ClassVar[int | None] = 90
    demo_row: ClassVar[int | None] = 70
    ablation: ClassVar[AblationRow | None] = AblationRow(3, "TSV-M (both)", low_rank=True,
                                                         interference_reduction=True)
    spectrum_compared: ClassVar[bool] = True


@register
@dataclass
class TSVMWhitening(_TaskSingularVectorsMerge):
    """TSV-M with whitening instead of Procrustes (Prop. 4.1)."""

    name: ClassVar[str] = "TSVM_2"
    label: ClassVar[str] = "TSV-M (whitening)"
    reference: ClassVar[str] = TSV_REFERENCE
    color: ClassVar[str | None] = "#ff9896"
    display_order: ClassVar[int | None] = 80
    orthogonalization: ClassVar[Orthogonalization] = "whitening"


@register
@dataclass
class LowRankOnly(_TaskSingularVectorsMerge):
    """Ablation (Table 4): sum of each task's rank-k truncation, no decorrelation."""

    name: ClassVar[str] = "TSVM_lowrank_only"
    label: ClassVar[str] = "TSV-M: low-rank only"
    reference: ClassVar[str] = TSV_REFERENCE
    color: ClassVar[str | None] = "#17becf"
    display_order: ClassVar[int | None] = 60
    ablation: ClassVar[AblationRow | None] = AblationRow(1, "low-rank only", low_rank=True,
                                                         interference_reduction=False)
    orthogonalization: ClassVar[Orthogonalization] = "none"


@register
@dataclass
class InterferenceReductionOnly(_TaskSingularVectorsMerge):
    """Ablation (Table 4): decorrelation of the full-rank task matrices, no truncation."""

    name: ClassVar[str] = "TSVM_interference_only"
    label: ClassVar[str] = "TSV-M: interference reduction only"
    reference: ClassVar[str] = TSV_REFERENCE
    color: ClassVar[str | None] = "#aec7e8"
    display_order: ClassVar[int | None] = 70
    ablation: ClassVar[AblationRow | None] = AblationRow(2, "interference reduction only", low_rank=False,
                                                         interference_reduction=True)
    full_rank: ClassVar[bool] = True


@register
@dataclass
class TSVC(MergeMethod):
    """TSV-C: each task's matrices compressed to their top 1/T singular components; task known at test time."""

    name: ClassVar[str] = "TSVC"
    label: ClassVar[str] = "TSV-C"
    reference: ClassVar[str] = TSV_REFERENCE
    color: ClassVar[str | None] = "#2ca02c"
    display_order: ClassVar[int | None] = 160
    demo_row: ClassVar[int | None] = 120
    storage_compared: ClassVar[bool] = True
    task_specific: ClassVar[bool] = True
    uses_entry_rules: ClassVar[bool] = True
    svd: SVDMode = "exact"

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd(compression=True):
            deltas = entry.deltas()
            # clones, so the output keeps each task's own row and not the whole stack alive
            return EntryMerge(per_task=[deltas[t].clone() if t in entry.changed else None
                                        for t in range(entry.num_tasks)])
        rows, cols = entry.shape
        k = components_per_task(rows, cols, entry.num_tasks)
        per_task: list[Any] = [None] * entry.num_tasks
        if entry.factored:  # LoRA updates: each task's top k from the exact SVD of its factors
            for task in entry.changed:
                U, s, V = factored_svd(entry.updates[task], entry.device)  # type: ignore[arg-type]
                per_task[task] = LowRankFactors(U[:, :k], s[:k], V[:, :k])
            return EntryMerge(per_task=per_task)
        factors = tsv_compress_matrix(entry.deltas(entry.changed), k, self.svd)
        for task, compressed in zip(entry.changed, factors, strict=True):
            per_task[task] = compressed
        return EntryMerge(per_task=per_task)

    def finalize(self, tasks: TaskVectors) -> dict[str, Any]:
        shapes = {key: tasks.shape(key) for key in tasks.keys if tasks.is_mergeable(key)}
        per_task = tsvc_storage(shapes, tasks.num_tasks, tasks.rules)
        full = sum(int(np.prod(shape)) for shape in shapes.values())
        return {"storage": {"numbers_per_task": per_task, "numbers_total": per_task * tasks.num_tasks,
                            "full_task_vector_numbers": full, "compression_ratio": full / per_task if per_task else 0}}


def tsvc_storage(shapes: dict[str, tuple[int, ...]], num_tasks: int, rules: EntryRules | None = None) -> int:
    """Numbers stored per task by TSV-C: k(rows + cols + 1) per matrix, every other entry whole."""
    rules = rules or EntryRules()
    total = 0
    for key, shape in shapes.items():
        if rules.uses_svd(key, shape, compression=True):
            rows, cols = shape
            total += components_per_task(rows, cols, num_tasks) * (rows + cols + 1)
        else:
            total += int(np.prod(shape))
    return total
