"""The data-free methods published since TSV, registered under their config names (SPEC_BEYOND §B1-§B5).

Each class wires its parameters to the pure tensor functions of ``isotropic``, ``dc_merge`` and ``cart``; the
streaming engine feeds it one entry at a time. Matrix entries follow the TSV-M rule (2-D, not ``text_projection``)
except CART, which selects its low-rank entries by name as its authors do; every other floating entry gets mean τ.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from .cart import PUBLISHED_SETTINGS, cart_entry, is_low_rank_key
from .dc_merge import DEFAULT_DENSITY, dc_merge_matrix
from .isotropic import iso_c_matrix, iso_cts_matrix, iso_cts_sizes
from .registry import EntryMerge, MergeMethod, register
from .task_vectors import TaskEntry, TaskVectors
from .tsv import mean_of_tasks

#: Model whose CART settings the authors published (their configs are all ViT-B-32).
CART_PUBLISHED_MODEL = "ViT-B-32"


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

    def _patience_suffix(self) -> str:
        if self.early_stop_patience == 3:
            return ""
        return "_nostop" if self.early_stop_patience is None else f"_patience{self.early_stop_patience}"


@register
@dataclass
class IsoC(_IsotropicMerge):
    """Iso-C: τMT = σ̄·U Vᵀ of Σ τi on matrix entries (a flat spectrum), mean τ elsewhere."""

    name: ClassVar[str] = "iso_c"

    def run_name(self) -> str:
        return f"{self.name}{self._patience_suffix()}"

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        return EntryMerge(task_vector=iso_c_matrix(entry.deltas(entry.changed)))


@register
@dataclass
class IsoCTS(_IsotropicMerge):
    """Iso-CTS: the common subspace of Σ τi plus each task's own top directions, orthogonalized, flat spectrum."""

    name: ClassVar[str] = "iso_cts"
    common_space_fraction: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.common_space_fraction <= 1.0:
            raise ValueError(f"iso_cts: common_space_fraction={self.common_space_fraction} is outside [0, 1] (the "
                             "fraction of each matrix's rank given to the common subspace; published: 0.8)")

    def run_name(self) -> str:
        return f"{self.name}_common{self.common_space_fraction:g}{self._patience_suffix()}"

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
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


@register
@dataclass
class DCMerge(MergeMethod):
    """DC-Merge (full fine-tuning path): per-task rank-⌊r/T⌋ truncations merged in a shared cover basis."""

    name: ClassVar[str] = "dc_merge"
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


@register
@dataclass
class Cart(MergeMethod):
    """CART: the weight average plus λ times the sum of each task's rank-k deviation from it, at α = 1.

    ``prior`` (λ) and ``rank_ratio`` (ρ) left null take the authors' values for the number of tasks (published
    for ViT-B-32 with 8, 14 and 20 tasks only); anywhere else they must be given.
    """

    name: ClassVar[str] = "cart"
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

    def prepare(self, tasks: TaskVectors, *, progress: bool = False) -> None:
        if self.prior is None or self.rank_ratio is None:
            raise ValueError(_missing_cart_settings(None, tasks.num_tasks))

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        assert self.prior is not None and self.rank_ratio is not None  # checked by prepare
        # The published name rule (attention and MLP matrices), among the entries the rule set treats as matrices.
        low_rank = is_low_rank_key(entry.key, entry.shape) and entry.uses_svd()
        return EntryMerge(task_vector=cart_entry(entry.deltas(), self.prior, self.rank_ratio, low_rank=low_rank))


def _missing_cart_settings(model: str | None, num_tasks: int) -> str:
    published = "; ".join(f"{t} tasks: prior={s.prior:g} rank_ratio={s.rank_ratio:g}"
                          for t, s in sorted(PUBLISHED_SETTINGS.items()))
    where = f"model {model} with {num_tasks} tasks" if model else f"{num_tasks} tasks on an unnamed model"
    return (f"cart: prior and rank_ratio must be given for {where}: the authors published them for "
            f"{CART_PUBLISHED_MODEL} only ({published}). Set both, e.g. method.prior=2.0 method.rank_ratio=0.12 "
            "(tsvmerge merge: --set prior=2.0 rank_ratio=0.12)")
