"""Merges that look at data: ESM (SPEC_ESM) and RegMean (SPEC_REGMEAN).

Both declare a :class:`~tsvmerge.merging.calibration.CalibrationSpec`; the calibration pass hands them one statistic
per task and linear map (:meth:`absorb`), which they fold at once into what their merge needs (ESM: each task's
essential subspace; RegMean: the running sums S and P), and ``merge_entry`` then streams as for any method.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from ..calibration import CalibrationError, CalibrationSpec, InputStatistic
from ..entry_rules import EntryRules
from ..esm import EssentialSubspace, esm_merge_matrix, essential_subspace, interlayer_factors, interlayer_group
from ..registry import EntryMerge, MergeMethod, register
from ..regmean import RegressionSums, regmean_solve
from ..svd import SVDMode
from ..task_vectors import TaskEntry, TaskVectors
from ..tsv import components_per_task, mean_of_tasks, orthogonalize, task_singular_vectors

log = logging.getLogger(__name__)

#: The input of a packed attention output projection is not decomposed by ESM (the authors' O-projection ESD is
#: commented out, SPEC_ESM E2): that map is merged by TSV-M.
_ESM_SKIPPED = ("attn.out_proj.weight",)


class _Calibrated(MergeMethod):
    """What both data-aware methods share: the keys they were calibrated on, and the refusal to merge without."""

    #: key -> the tasks whose statistic was absorbed; empty until the calibration pass begins.
    _seen: ClassVar[Mapping[str, set[int]]] = MappingProxyType({})

    def _start(self, tasks: TaskVectors, keys: Sequence[str]) -> None:
        self._tasks = tasks
        self._keys = list(keys)
        self._seen = {key: set() for key in keys}

    def _delta(self, task: int, key: str) -> torch.Tensor:
        return self._tasks.entry(key).delta(task)

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        self._check_complete(tasks)

    def _check_complete(self, tasks: TaskVectors) -> None:
        keys = getattr(self, "_keys", None)
        if keys is None or getattr(self, "_tasks", None) is not tasks:
            raise CalibrationError(
                f"{self.name} merges with data: run the calibration pass first (main.py draws the samples itself; "
                "`tsvmerge merge` takes --calibration FILE or --calibration-text FILE.jsonl)")
        for key in keys:
            missing = sorted(set(range(tasks.num_tasks)) - self._seen[key])
            if missing:
                raise CalibrationError(f"{self.name}: no calibration statistic of {key!r} for task(s) "
                                       f"{', '.join(tasks.names[t] for t in missing)}")


ESM_REFERENCE = "Li et al., Model Merging in the Essential Subspace, CVPR 2026"


@register
@dataclass
class ESM(_Calibrated):
    """ESM: per linear map, each task's top ⌊m/T⌋ principal directions of X·ΔWᵀ on its own samples, weighted by
    eigenvalue and task norm, orthogonalized into a flat spectrum; other matrices TSV-M, the rest averaged;
    inter-layer rescaling; α (golden-section search) on the decomposed maps only."""

    name: ClassVar[str] = "esm"
    label: ClassVar[str] = "ESM"
    reference: ClassVar[str] = ESM_REFERENCE
    color: ClassVar[str | None] = "#8c564b"
    display_order: ClassVar[int | None] = 125
    demo_row: ClassVar[int | None] = 105
    alpha_grid_max: ClassVar[float | None] = 2.0
    alpha_search: ClassVar[str] = "golden"
    uses_entry_rules: ClassVar[bool] = True
    calibration: ClassVar[CalibrationSpec | None] = CalibrationSpec("rows", samples=32, split="validation", seed=0)
    #: Exponent of the eigenvalue weights (SPEC_ESM E4 step 2).
    eig_exponent: float = 0.15
    #: Power of the task and column norms (E4 steps 3-5) and of the inter-layer rescaling (E6).
    norm_power: float = 2.0
    #: The constant factor of the merged maps (E4 step 6).
    scale: float = 2.0
    #: SVD of the matrices merged by TSV-M (exact | full | randomized).
    svd: SVDMode = "exact"

    def calibration_keys(self, available: Mapping[str, tuple[int, ...]], rules: EntryRules) -> list[str]:
        return [key for key, shape in available.items()
                if rules.uses_svd(key, shape) and not key.endswith(_ESM_SKIPPED)]

    def begin_calibration(self, tasks: TaskVectors, keys: Sequence[str]) -> None:
        self._start(tasks, keys)
        self._subspaces: dict[str, list[EssentialSubspace | None]] = {key: [None] * tasks.num_tasks for key in keys}
        self._undetermined: set[str] = set()

    def absorb(self, task: int, key: str, statistic: InputStatistic) -> None:
        if statistic.rows is None:
            raise CalibrationError(f"{self.name} needs the input rows of {key!r}, not a Gram matrix")
        delta = self._delta(task, key)
        if not bool(delta.any()):
            raise CalibrationError(f"{self.name}: task {self._tasks.names[task]!r} leaves {key!r} unchanged, so its "
                                   "essential subspace is undefined (SPEC_ESM E9); leave that task out")
        k = delta.shape[0] // self._tasks.num_tasks
        if k == 0:
            raise CalibrationError(f"{self.name}: {key!r} has {delta.shape[0]} output rows, fewer than the "
                                   f"{self._tasks.num_tasks} tasks (k = 0)")
        sub = essential_subspace(statistic.rows, delta, k)
        if not sub.determined and key not in self._undetermined:
            self._undetermined.add(key)
            log.warning("%s: k = %d exceeds the rank of X·ΔWᵀ on %s (%d rows): some kept directions are null ones "
                        "(SPEC_ESM E9, implementation-defined)", self.name, k, key, statistic.count)
        self._subspaces[key][task] = sub
        self._seen[key].add(task)

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        super().prepare(tasks, progress=progress, workers=workers)
        if len(self._subspaces) < len(self._keys):
            raise CalibrationError(f"{self.name}: the calibration statistics were used by an earlier merge; run the "
                                   "calibration pass again")

    def alpha_scaled(self, key: str) -> bool:
        return not self._seen or key in self._seen

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return entry.key not in self._seen and not entry.uses_svd()

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if entry.key in self._seen:
            # consumed: each map's subspaces are freed as soon as it is merged (they are most of ESM's memory)
            subspaces = self._subspaces.pop(entry.key, None)
            if subspaces is None or any(sub is None for sub in subspaces):
                raise CalibrationError(f"{self.name}: {entry.key!r} was merged already; run the calibration pass "
                                       "again before merging again")
            merged = esm_merge_matrix(entry.deltas(), subspaces,  # type: ignore[arg-type]
                                      eig_exponent=self.eig_exponent, norm_power=self.norm_power, scale=self.scale)
            return EntryMerge(task_vector=merged)
        if not entry.uses_svd():
            return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))
        rows, cols = entry.shape
        k = components_per_task(rows, cols, entry.num_tasks)
        tsv = task_singular_vectors(entry.deltas(entry.changed), k, self.svd, num_tasks=entry.num_tasks,
                                    all_nonzero=True)
        return EntryMerge(task_vector=orthogonalize(tsv, "procrustes",
                                                    approximate=self.svd == "randomized").reconstruct())

    def rescaled_keys(self, keys: Sequence[str]) -> list[str]:
        tasks = self._tasks
        return [key for key in keys if key in self._seen or (interlayer_group(key) is not None
                and tasks.is_mergeable(key) and tasks.rules.uses_svd(key, tasks.shape(key)))]

    def rescale(self, norms: Mapping[str, float]) -> dict[str, float]:
        return interlayer_factors(norms, self.norm_power)

    def finalize(self, tasks: TaskVectors) -> dict[str, Any]:
        return {"esd_keys": len(self._keys)}


REGMEAN_REFERENCE = ("Jin et al., Dataless Knowledge Fusion by Merging Weights of Language Models, ICLR 2023 "
                     "(as implemented in FusionBench)")


@register
@dataclass
class RegMean(_Calibrated):
    """RegMean: each linear map W* = θ0 + (Σ τi G̃i)(Σ G̃i)⁻¹ from the reduced Gram matrices of the tasks' inputs;
    every other entry averaged; no α."""

    name: ClassVar[str] = "regmean"
    label: ClassVar[str] = "RegMean"
    reference: ClassVar[str] = REGMEAN_REFERENCE
    color: ClassVar[str | None] = "#bcbd22"
    display_order: ClassVar[int | None] = 25
    demo_row: ClassVar[int | None] = 25
    uses_entry_rules: ClassVar[bool] = True
    calibration: ClassVar[CalibrationSpec | None] = CalibrationSpec(
        "gram", samples=256, split="train", seed=0, batch_size=32, draw="permutation")
    #: a: the factor kept on the Gram matrices' off-diagonal entries, G̃ = a·G + (1 − a)·Diag(G).
    reduce_non_diagonal_ratio: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 <= self.reduce_non_diagonal_ratio <= 1.0:
            raise ValueError(f"reduce_non_diagonal_ratio must lie in [0, 1], got {self.reduce_non_diagonal_ratio}")

    def calibration_keys(self, available: Mapping[str, tuple[int, ...]], rules: EntryRules) -> list[str]:
        return [key for key, shape in available.items() if rules.uses_svd(key, shape)]

    def begin_calibration(self, tasks: TaskVectors, keys: Sequence[str]) -> None:
        self._start(tasks, keys)
        self._sums: dict[str, RegressionSums] = {}

    def absorb(self, task: int, key: str, statistic: InputStatistic) -> None:
        if statistic.gram is None:
            raise CalibrationError(f"{self.name} needs the Gram matrix of {key!r}'s inputs")
        delta = self._delta(task, key)
        sums = self._sums.get(key)
        if sums is None:
            sums = self._sums[key] = RegressionSums.empty(*delta.shape)
        sums.add(task, delta, statistic.gram, self.reduce_non_diagonal_ratio, statistic.count)
        self._seen[key].add(task)

    def elementwise_on(self, entry: TaskEntry) -> bool:
        return entry.key not in self._seen

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        if entry.key in self._seen:
            return EntryMerge(task_vector=regmean_solve(self._sums[entry.key], entry.key).to(entry.device,
                                                                                              torch.float32))
        return EntryMerge(task_vector=mean_of_tasks(entry.deltas()))

    def finalize(self, tasks: TaskVectors) -> dict[str, Any]:
        return {"regression_keys": len(self._keys)}

