"""CART (SPEC_BEYOND §B5): the weight average plus λ times each task's low-rank deviation from it.

The class wires its parameters to the pure tensor functions of ``cart``; the streaming engine feeds it one entry at a
time. CART selects its low-rank entries by name as its authors do (among the matrices of the entry rules); every
other floating entry gets the plain average. Entries changed only by LoRA updates are merged from their factors
(same result, no dense update formed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from ..cart import PUBLISHED_SETTINGS, cart_entry, cart_factors, is_low_rank_key
from ..lora import update_sides
from ..registry import EntryMerge, MergeMethod, register
from ..task_vectors import TaskEntry, TaskVectors
from ..tsv import LowRankFactors

#: Model whose CART settings the authors published (their configs are all ViT-B-32).
CART_PUBLISHED_MODEL = "ViT-B-32"


@register
@dataclass
class Cart(MergeMethod):
    """CART: the weight average plus λ times the sum of each task's rank-k deviation from it, at α = 1.

    ``prior`` (λ) and ``rank_ratio`` (ρ) left null take the authors' values for the number of tasks (published
    for ViT-B-32 with 8, 14 and 20 tasks only); anywhere else they must be given.
    """

    name: ClassVar[str] = "cart"
    label: ClassVar[str] = "CART"
    reference: ClassVar[str] = "Choi et al., Revisiting Weight Averaging for Model Merging (CART), arXiv 2412.12153"
    color: ClassVar[str | None] = "#637939"
    display_order: ClassVar[int | None] = 130
    demo_row: ClassVar[int | None] = 110
    #: The authors published no settings for the demo model: the demo uses their 8-task ViT-B-32 values.
    demo_settings: ClassVar[tuple[str, ...]] = ("prior=2.0", "rank_ratio=0.12")
    uses_entry_rules: ClassVar[bool] = True
    prior: float | None = None
    rank_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.prior is not None and not math.isfinite(self.prior):
            raise ValueError(f"cart: prior={self.prior} must be a finite number (λ, the weight of the low-rank "
                             "deviations)")
        if self.rank_ratio is not None and not 0.0 <= self.rank_ratio <= 1.0:
            raise ValueError(f"cart: rank_ratio={self.rank_ratio} is outside [0, 1] (the fraction of each "
                             "centred task matrix's rank kept)")

    def run_name(self) -> str:
        parts = [self.name]
        if self.prior is not None:
            parts.append(f"prior{self.prior:g}")
        if self.rank_ratio is not None:
            parts.append(f"rank{self.rank_ratio:g}")
        return "_".join(parts)

    def for_benchmark(self, model: str | None, num_tasks: int) -> MergeMethod:
        if self.prior is not None and self.rank_ratio is not None:
            return self
        published = PUBLISHED_SETTINGS.get(num_tasks) if model == CART_PUBLISHED_MODEL else None
        if published is None:
            raise ValueError(_missing_cart_settings(model, num_tasks))
        return dataclasses.replace(self, prior=published.prior if self.prior is None else self.prior,
                                   rank_ratio=published.rank_ratio if self.rank_ratio is None else self.rank_ratio)

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        if self.prior is None or self.rank_ratio is None:
            raise ValueError(_missing_cart_settings(None, tasks.num_tasks))

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        assert self.prior is not None and self.rank_ratio is not None  # checked by prepare
        return EntryMerge(task_vector=cart_entry(entry.deltas(), self.prior, self.rank_ratio,
                                                 low_rank=self._low_rank(entry)))

    def merges_factors(self) -> bool:
        return True

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        assert self.prior is not None and self.rank_ratio is not None  # checked by prepare
        rows, cols = entry.shape
        return cart_factors(update_sides(entry.updates, entry.device), rows, cols, self.prior, self.rank_ratio,
                            low_rank=self._low_rank(entry))

    @staticmethod
    def _low_rank(entry: TaskEntry) -> bool:
        """The published name rule (attention and MLP matrices), among the entries the rule set treats as
        matrices."""
        return is_low_rank_key(entry.key, entry.shape) and entry.uses_svd()


def _missing_cart_settings(model: str | None, num_tasks: int) -> str:
    published = "; ".join(f"{t} tasks: prior={s.prior:g} rank_ratio={s.rank_ratio:g}"
                          for t, s in sorted(PUBLISHED_SETTINGS.items()))
    where = f"model {model} with {num_tasks} tasks" if model else f"{num_tasks} tasks on an unnamed model"
    return (f"cart: prior and rank_ratio must be given for {where}: the authors published them for "
            f"{CART_PUBLISHED_MODEL} only ({published}). Set both, e.g. method.prior=2.0 method.rank_ratio=0.12 "
            "(tsvmerge merge: --set prior=2.0 rank_ratio=0.12)")
