"""Every merge method of SPEC §3, registered under its config name.

Each class only wires its parameters to the pure tensor functions of ``tsv``, ``sparsify`` and
``interference``; the streaming engine feeds it one entry at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..checkpoints.tall_mask_files import check_mask_file, load_tall_masks
from .entry_rules import EntryRules
from .interference import interference_per_block, singular_task_interference
from .parallel import map_entries
from .registry import EntryMerge, MaskFiles, MergeMethod, register
from .sparsify import (
    TALL_LAMBDAS,
    TiesAggregation,
    consensus_mask,
    elect_sign,
    keep_top,
    tall_mask,
    tall_mask_levels,
    ties_merge,
)
from .svd import SVDMode
from .task_vectors import ELEMENTWISE_BLOCK_BYTES, TaskEntry, TaskVectors
from .thresholds import task_thresholds
from .tsv import (
    Orthogonalization,
    components_per_task,
    mean_of_tasks,
    orthogonalize,
    task_singular_vectors,
    tsv_compress_matrix,
)


def _trimmed(entry: TaskEntry, thresholds: list[float | None]) -> Tensor:
    return torch.stack([keep_top(d, t) for d, t in zip(entry.deltas(), thresholds, strict=True)])


# --------------------------------------------------------------------------- task arithmetic family

@register
@dataclass
class ZeroShot(MergeMethod):
    """The pre-trained model itself: τMT = 0."""

    name: ClassVar[str] = "zeroshot"
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

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress)

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

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self._sum(entry) / entry.num_tasks)


@register
@dataclass
class TaskArithmetic(_TopKSum):
    """Task Arithmetic: τMT = Σ τi (optionally each trimmed to its top-k%)."""

    name: ClassVar[str] = "sum"
    alpha_grid_max: ClassVar[float | None] = 1.0

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self._sum(entry))


@register
@dataclass
class Ties(MergeMethod):
    """TIES-Merging: trim to top-k%, elect signs, disjoint mean (or sum / max) of agreeing values."""

    name: ClassVar[str] = "ties"
    alpha_grid_max: ClassVar[float | None] = 1.0
    k: float = 20.0
    agg: TiesAggregation = "mean"

    def __post_init__(self) -> None:
        if not 0 < self.k <= 100:
            raise ValueError(f"{self.name}: k={self.k} is outside (0, 100]; k is the percentage of each task "
                             "vector's largest-magnitude entries kept (100 keeps them all)")

    def run_name(self) -> str:
        return f"{self.name}_k{self.k:g}_{self.agg}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress)
        # Elected signs of exactly 0 take the sign of the sum of all elected signs (published rule):
        # a whole-model statistic, hence this extra pass.
        def sign_sum(entry: TaskEntry) -> float:
            if not entry.changed:
                return 0.0
            return sum(float(elect_sign(_trimmed(block, self._thresholds)).sum())
                       for block in entry.row_blocks(ELEMENTWISE_BLOCK_BYTES))

        # Entries side by side: each sum is an integer, so the total does not depend on the order.
        total = sum(part for _, part in map_entries(sign_sum, tasks, "TIES signs", progress=progress))
        # Sums of ±1 and 0: integer-valued, so the sum over processes is exact (and the same as in one process).
        total = float(tasks.reduce_sum(torch.tensor(total, dtype=torch.float64)))
        self._majority_sign = float(np.sign(total))

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=ties_merge(entry.deltas(), self._thresholds, self._majority_sign, self.agg))

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return True  # thresholds and the majority sign come from prepare


# --------------------------------------------------------------------------- mask-based methods

@register
@dataclass
class MagnitudeMasking(MergeMethod):
    """Σ τi, with task t evaluated through the mask of its own top-k% entries."""

    name: ClassVar[str] = "mag_masking"
    task_specific: ClassVar[bool] = True
    k: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.k <= 100:
            raise ValueError(f"{self.name}: k={self.k} is outside (0, 100]; k is the percentage of each task "
                             "vector's largest-magnitude entries kept (100 keeps them all)")

    def mask_labels(self) -> tuple[Any, ...]:
        return (f"top-{self.k:g}%",)

    def run_name(self) -> str:
        return f"{self.name}_k{self.k:g}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress)

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        deltas = entry.deltas()
        masks = torch.stack([
            torch.ones_like(d, dtype=torch.bool) if t is None else d.abs() >= t
            for d, t in zip(deltas, self._thresholds, strict=True)
        ])
        return EntryMerge(task_vector=deltas.sum(dim=0), masks=masks.to(torch.uint8))

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return True  # the top-k thresholds are whole-model statistics from prepare


@dataclass
class _MergedForMasks(MergeMethod):
    """τMT on which TALL and consensus masks are built: Σ τi, or TIES (top-``ties_k``%, ``ties_agg``)."""

    use_ties: bool = False
    ties_agg: TiesAggregation = "sum"
    ties_k: float = 20.0
    mask_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.ties_k <= 100:
            raise ValueError(f"{self.name}: ties_k={self.ties_k} is outside (0, 100]; it is the percentage of each "
                             "task vector's largest-magnitude entries TIES keeps")

    @property
    def _variant(self) -> str:
        """The published file-name part of masks built on TIES (``_use_ties_<agg>``)."""
        return f"_use_ties_{self.ties_agg}" if self.use_ties else ""

    def _built_with(self) -> dict[str, Any]:
        return {"use_ties": self.use_ties, **({"ties_agg": self.ties_agg, "ties_k": self.ties_k}
                                              if self.use_ties else {})}

    def with_mask_file(self, path: str) -> MergeMethod:
        return dataclasses.replace(self, mask_file=str(path))

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        self._ties = Ties(k=self.ties_k, agg=self.ties_agg) if self.use_ties else None
        if self._ties is not None:
            self._ties.prepare(tasks, progress=progress)

    def elementwise_on(self, entry: TaskEntry) -> bool:
        # Masks built here compare values one by one (TIES' statistics come from prepare); saved masks are
        # sliced by whole entry, so an entry merged with them stays whole.
        return self._loaded is None

    def _merged_tv(self, entry: TaskEntry) -> Tensor:
        if self._ties is not None:
            return self._ties.merge_entry(entry).task_vector
        return entry.deltas().sum(dim=0)

    def _task_masks(self, entry: TaskEntry, merged_tv: Tensor, lam: float) -> Tensor:
        base = entry.pretrained.to(entry.device, torch.float32)
        return torch.stack([tall_mask(base, ft.to(entry.device, torch.float32), merged_tv, lam)
                            for ft in entry.finetuned])


@register
@dataclass
class TallMask(_MergedForMasks):
    """TALL masks: per task, keep p where |θ0 − θt| > |θ0 + τMT − θt|·λ, for every λ of the grid.

    The masks of all λ are produced (λ is then chosen per task on validation data); with
    ``mask_file`` set, the masks saved by an earlier run are used instead (``load_mask``).
    """

    name: ClassVar[str] = "tall_mask"
    task_specific: ClassVar[bool] = True
    load_mask: bool = False

    def run_name(self) -> str:
        return f"{self.name}{self._variant}"

    def mask_files(self) -> MaskFiles:
        reads = self.load_mask or self.mask_file is not None
        return MaskFiles(reads=reads, writes=not reads, variant=self._variant, file=self.mask_file,
                         made_by=self.name, built_with=self._built_with())

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        if self.load_mask and self.mask_file is None:
            raise ValueError("tall_mask with load_mask=true reads saved masks: give mask_file=<TALL_mask_*.npy> "
                             "(main.py finds the file a tall_mask run saved)")
        super().prepare(tasks, progress=progress)
        self._loaded = _load_task_masks(self.mask_file, tasks, self._built_with()) if self.mask_file else None

    def mask_labels(self) -> tuple[Any, ...]:
        return ("loaded",) if self.mask_file else TALL_LAMBDAS

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        merged_tv = self._merged_tv(entry)
        if self._loaded is not None:
            masks = self._loaded.entry(entry.key).to(entry.device)
        else:
            base = entry.pretrained.to(entry.device, torch.float32)
            masks = torch.stack([tall_mask_levels(base, ft.to(entry.device, torch.float32), merged_tv)
                                 for ft in entry.finetuned])
        return EntryMerge(task_vector=merged_tv, masks=masks.to(torch.uint8))


@register
@dataclass
class Consensus(_MergedForMasks):
    """Consensus merging: keep τMT only where at least ``prun_thre_k`` TALL masks keep the parameter.

    The TALL masks come from ``mask_file`` (as saved by ``tall_mask``) or, without data to select
    λ per task, are built on the fly with one ``tall_lambda`` for every task.
    """

    name: ClassVar[str] = "consensus"
    alpha_grid_max: ClassVar[float | None] = 1.0
    prun_thre_k: int = 2
    tall_lambda: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prun_thre_k < 1:
            raise ValueError(f"consensus: prun_thre_k={self.prun_thre_k} must be at least 1 (the number of task "
                             "masks that must keep a parameter)")
        if self.tall_lambda is not None and not (np.isfinite(self.tall_lambda) and self.tall_lambda >= 0):
            raise ValueError(f"consensus: tall_lambda={self.tall_lambda} must be a finite number >= 0 (the TALL "
                             "mask threshold λ)")

    def run_name(self) -> str:
        return f"{self.name}_k{self.prun_thre_k}{self._variant}"

    def mask_files(self) -> MaskFiles | None:
        if self.tall_lambda is not None:
            return None  # masks built on the fly with one λ
        return MaskFiles(reads=True, writes=False, variant=self._variant, file=self.mask_file,
                         made_by=TallMask.name, built_with=self._built_with())

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        if self.prun_thre_k > tasks.num_tasks:
            raise ValueError(f"consensus: prun_thre_k={self.prun_thre_k} but only {tasks.num_tasks} fine-tuned "
                             "model(s) are merged: no parameter could be kept and the result would be the "
                             f"pre-trained model itself. Merge at least {self.prun_thre_k} fine-tuned models or "
                             "lower prun_thre_k.")
        if (self.mask_file is None) == (self.tall_lambda is None):
            raise ValueError("consensus needs TALL masks: give exactly one of mask_file=<TALL_mask_*.npy> "
                             "(saved by a tall_mask run) or tall_lambda=<λ> (build them with one λ)")
        super().prepare(tasks, progress=progress)
        self._loaded = _load_task_masks(self.mask_file, tasks, self._built_with()) if self.mask_file else None

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        merged_tv = self._merged_tv(entry)
        if self._loaded is not None:
            masks = self._loaded.entry(entry.key).to(entry.device).bool()
        else:
            masks = self._task_masks(entry, merged_tv, self.tall_lambda)
        return EntryMerge(task_vector=merged_tv * consensus_mask(masks, self.prun_thre_k))


class _FlatTaskMasks:
    """Saved TALL masks (flat over all θ0 entries in sorted key order), sliced per entry."""

    def __init__(self, masks: dict[str, np.ndarray], tasks: TaskVectors) -> None:
        self._offsets = tasks.flat_offsets()
        self._shapes = {key: tasks.shape(key) for key in tasks.keys}
        self._masks = masks

    def entry(self, key: str) -> Tensor:
        start, end = self._offsets[key]
        return torch.stack([torch.from_numpy(m[start:end].copy()).reshape(self._shapes[key])
                            for m in self._masks.values()])


def _load_task_masks(path: str, tasks: TaskVectors, built_with: dict[str, Any] | None = None) -> _FlatTaskMasks:
    """The saved masks of the merged tasks, by task name: a file without a mask for one of them (or built with
    other parameters, when its record says so) is an error naming both task lists."""
    total = sum(end - start for start, end in tasks.flat_offsets().values())
    names = [n.removesuffix("Val") for n in tasks.names]
    check_mask_file(path, names, built_with)
    saved = load_tall_masks(path, num_entries=total)
    saved = {name: saved[name] for name in names}
    for name, mask in saved.items():
        if mask.shape[0] != total:
            raise ValueError(f"mask {name!r} in {path} has {mask.shape[0]} entries; the model has {total}")
    return _FlatTaskMasks(saved, tasks)


# --------------------------------------------------------------------------- Task Singular Vectors

@dataclass
class _TaskSingularVectorsMerge(MergeMethod):
    """TSV-M family: SVD-based merge of matrix entries, mean of the others."""

    alpha_grid_max: ClassVar[float | None] = 3.0
    uses_entry_rules: ClassVar[bool] = True
    orthogonalization: ClassVar[Orthogonalization] = "procrustes"
    full_rank: ClassVar[bool] = False
    svd: SVDMode = "exact"
    report_sti: bool = False

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
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


@register
@dataclass
class TSVMWhitening(_TaskSingularVectorsMerge):
    """TSV-M with whitening instead of Procrustes (Prop. 4.1)."""

    name: ClassVar[str] = "TSVM_2"
    orthogonalization: ClassVar[Orthogonalization] = "whitening"


@register
@dataclass
class LowRankOnly(_TaskSingularVectorsMerge):
    """Ablation (Table 4): sum of each task's rank-k truncation, no decorrelation."""

    name: ClassVar[str] = "TSVM_lowrank_only"
    orthogonalization: ClassVar[Orthogonalization] = "none"


@register
@dataclass
class InterferenceReductionOnly(_TaskSingularVectorsMerge):
    """Ablation (Table 4): decorrelation of the full-rank task matrices, no truncation."""

    name: ClassVar[str] = "TSVM_interference_only"
    full_rank: ClassVar[bool] = True


@register
@dataclass
class TSVC(MergeMethod):
    """TSV-C: each task's matrices compressed to their top 1/T singular components; task known at test time."""

    name: ClassVar[str] = "TSVC"
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
        factors = tsv_compress_matrix(entry.deltas(entry.changed), k, self.svd)
        per_task: list[Any] = [None] * entry.num_tasks
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
