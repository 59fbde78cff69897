"""DC-Merge, full fine-tuning path (SPEC_BEYOND §B4): per-task truncations merged in a shared cover basis.

The class wires its parameters to the pure tensor functions of ``dc_merge``; the streaming engine feeds it one entry
at a time. Matrix entries follow the TSV-M rule (2-D, not ``text_projection``); every other floating entry gets
mean τ. Entries changed only by LoRA updates are merged from their factors (same result, no dense update formed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..dc_merge import DEFAULT_DENSITY, dc_merge_factors, dc_merge_matrix
from ..lora import factored_mean, factored_svd
from ..registry import EntryMerge, MergeMethod, register
from ..task_vectors import TaskEntry
from ..tsv import LowRankFactors, mean_of_tasks


@register
@dataclass
class DCMerge(MergeMethod):
    """DC-Merge (full fine-tuning path): per-task rank-⌊r/T⌋ truncations merged in a shared cover basis."""

    name: ClassVar[str] = "dc_merge"
    label: ClassVar[str] = "DC-Merge"
    reference: ClassVar[str] = "DC-Merge, CVPR 2026 (arXiv 2603.06242)"
    color: ClassVar[str | None] = "#393b79"
    display_order: ClassVar[int | None] = 120
    demo_row: ClassVar[int | None] = 100
    spectrum_compared: ClassVar[bool] = True
    alpha_grid_max: ClassVar[float | None] = 3.0
    uses_entry_rules: ClassVar[bool] = True
    density: float = DEFAULT_DENSITY

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"dc_merge: density={self.density} is outside (0, 1]; it is the fraction of each "
                             "task's r² cover-basis coordinates kept (published: 0.001)")

    def run_name(self) -> str:
        return f"{self.name}_density{self.density:g}"

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        merged = dc_merge_matrix(entry.deltas(entry.changed), self.density, num_tasks=entry.num_tasks)
        return EntryMerge(task_vector=merged)

    def merges_factors(self) -> bool:
        return True

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        if not entry.uses_svd():
            return factored_mean(entry.updates, entry.num_tasks, entry.device)
        rows, cols = entry.shape
        components = [factored_svd(update, entry.device) for update in entry.updates
                      if update is not None and not update.is_zero()]
        return dc_merge_factors(components, rows, cols, entry.num_tasks, self.density)
