"""Isotropic merging (SPEC_BEYOND §B1-§B3): Iso-C and Iso-CTS, a flat spectrum on every matrix entry.

Each class wires its parameters to the pure tensor functions of ``isotropic``; the streaming engine feeds it one entry
at a time. Matrix entries follow the TSV-M rule (2-D, not ``text_projection``); every other floating entry gets
mean τ. Entries changed only by LoRA updates are merged from their factors (same result, no dense update formed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..isotropic import iso_c_factors, iso_c_matrix, iso_cts_factors, iso_cts_matrix, iso_cts_sizes
from ..lora import factored_mean, update_sides
from ..registry import EntryMerge, MergeMethod, register
from ..task_vectors import TaskEntry, TaskVectors
from ..tsv import LowRankFactors, mean_of_tasks

#: The paper of Iso-C and Iso-CTS.
ISO_REFERENCE = ("Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and Task-Specific "
                 "Subspaces, ICML 2025")


@dataclass
class _IsotropicMerge(MergeMethod):
    """Shared α protocol of Iso-C and Iso-CTS: grid up to 3 on validation, with the authors' early stopping."""

    alpha_grid_max: ClassVar[float | None] = 3.0
    uses_entry_rules: ClassVar[bool] = True
    early_stop_patience: int | None = 3

    def __post_init__(self) -> None:
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ValueError(f"{self.name}: early_stop_patience={self.early_stop_patience} must be at least 1, or "
                             "null to evaluate the whole α grid")

    def alpha_sweep_patience(self) -> int | None:
        return self.early_stop_patience

    def merges_factors(self) -> bool:
        return True

    def _patience_suffix(self) -> str:
        if self.early_stop_patience == 3:
            return ""
        return "_nostop" if self.early_stop_patience is None else f"_patience{self.early_stop_patience}"


@register
@dataclass
class IsoC(_IsotropicMerge):
    """Iso-C: τMT = σ̄·U Vᵀ of Σ τi on matrix entries (a flat spectrum), mean τ elsewhere."""

    name: ClassVar[str] = "iso_c"
    label: ClassVar[str] = "Iso-C"
    reference: ClassVar[str] = ISO_REFERENCE
    color: ClassVar[str | None] = "#c49c94"
    display_order: ClassVar[int | None] = 100
    demo_row: ClassVar[int | None] = 80
    spectrum_compared: ClassVar[bool] = True

    def run_name(self) -> str:
        return f"{self.name}{self._patience_suffix()}"

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        return EntryMerge(task_vector=iso_c_matrix(entry.deltas(entry.changed)))

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        if not entry.uses_svd():
            return factored_mean(entry.updates, entry.num_tasks, entry.device)
        rows, cols = entry.shape
        return iso_c_factors(update_sides(entry.updates, entry.device), rows, cols)


@register
@dataclass
class IsoCTS(_IsotropicMerge):
    """Iso-CTS: the common subspace of Σ τi plus each task's own top directions, orthogonalized, flat spectrum."""

    name: ClassVar[str] = "iso_cts"
    label: ClassVar[str] = "Iso-CTS"
    reference: ClassVar[str] = ISO_REFERENCE
    color: ClassVar[str | None] = "#e6550d"
    display_order: ClassVar[int | None] = 110
    demo_row: ClassVar[int | None] = 90
    spectrum_compared: ClassVar[bool] = True
    common_space_fraction: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.common_space_fraction <= 1.0:
            raise ValueError(f"iso_cts: common_space_fraction={self.common_space_fraction} is outside [0, 1] (the "
                             "fraction of each matrix's rank given to the common subspace; published: 0.8)")

    def run_name(self) -> str:
        return f"{self.name}_common{self.common_space_fraction:g}{self._patience_suffix()}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        # The size rule can give a negative common subspace for small fractions: refuse before any work.
        for key in tasks.keys:
            shape = tasks.shape(key)
            if tasks.is_mergeable(key) and tasks.rules.uses_svd(key, shape):
                try:
                    iso_cts_sizes(shape[0], shape[1], tasks.num_tasks, self.common_space_fraction)
                except ValueError as exc:
                    raise ValueError(f"{exc} (entry {key!r})") from None

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        return EntryMerge(task_vector=iso_cts_matrix(entry.deltas(), self.common_space_fraction))

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        if not entry.uses_svd():
            return factored_mean(entry.updates, entry.num_tasks, entry.device)
        rows, cols = entry.shape
        return iso_cts_factors(update_sides(entry.updates, entry.device), rows, cols, self.common_space_fraction)
