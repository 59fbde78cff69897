"""Mask-based methods (SPEC §3): magnitude masking, TALL masks and Consensus merging, with the saved TALL-mask files
they share.

Each class only wires its parameters to the pure tensor functions of ``sparsify``; the streaming engine feeds it one
entry at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ...checkpoints.tall_mask_files import check_mask_file, load_tall_masks
from ..registry import EntryMerge, MaskFiles, MergeMethod, register
from ..sparsify import TALL_LAMBDAS, TiesAggregation, consensus_mask, tall_mask, tall_mask_levels
from ..task_vectors import TaskEntry, TaskVectors
from ..thresholds import task_thresholds
from .arithmetic import Ties

#: The paper of TALL masks and Consensus merging (and of the magnitude-masking baseline they are compared with).
TALL_REFERENCE = "Wang et al., Localizing Task Information for Improved Model Merging and Compression, ICML 2024"


@register
@dataclass
class MagnitudeMasking(MergeMethod):
    """Σ τi, with task t evaluated through the mask of its own top-k% entries."""

    name: ClassVar[str] = "mag_masking"
    label: ClassVar[str] = "Magnitude masking"
    reference: ClassVar[str] = TALL_REFERENCE
    color: ClassVar[str | None] = "#e377c2"
    display_order: ClassVar[int | None] = 140
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

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._thresholds = task_thresholds(tasks, self.k, progress=progress, workers=workers)

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

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._ties = Ties(k=self.ties_k, agg=self.ties_agg) if self.use_ties else None
        if self._ties is not None:
            self._ties.prepare(tasks, progress=progress, workers=workers)

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
    label: ClassVar[str] = "TALL masks"
    reference: ClassVar[str] = TALL_REFERENCE
    color: ClassVar[str | None] = "#8c564b"
    display_order: ClassVar[int | None] = 150
    demo_row: ClassVar[int | None] = 60
    storage_compared: ClassVar[bool] = True
    task_specific: ClassVar[bool] = True
    load_mask: bool = False

    def run_name(self) -> str:
        return f"{self.name}{self._variant}"

    def mask_files(self) -> MaskFiles:
        reads = self.load_mask or self.mask_file is not None
        return MaskFiles(reads=reads, writes=not reads, variant=self._variant, file=self.mask_file,
                         made_by=self.name, built_with=self._built_with())

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        if self.load_mask and self.mask_file is None:
            raise ValueError("tall_mask with load_mask=true reads saved masks: give mask_file=<TALL_mask_*.npy> "
                             "(main.py finds the file a tall_mask run saved)")
        super().prepare(tasks, progress=progress, workers=workers)
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
    label: ClassVar[str] = "Consensus merging"
    reference: ClassVar[str] = TALL_REFERENCE
    color: ClassVar[str | None] = "#9467bd"
    display_order: ClassVar[int | None] = 50
    demo_row: ClassVar[int | None] = 50
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

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        if self.prun_thre_k > tasks.num_tasks:
            raise ValueError(f"consensus: prun_thre_k={self.prun_thre_k} but only {tasks.num_tasks} fine-tuned "
                             "model(s) are merged: no parameter could be kept and the result would be the "
                             f"pre-trained model itself. Merge at least {self.prun_thre_k} fine-tuned models or "
                             "lower prun_thre_k.")
        if (self.mask_file is None) == (self.tall_lambda is None):
            raise ValueError("consensus needs TALL masks: give exactly one of mask_file=<TALL_mask_*.npy> "
                             "(saved by a tall_mask run) or tall_lambda=<λ> (build them with one λ)")
        super().prepare(tasks, progress=progress, workers=workers)
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
