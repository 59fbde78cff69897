"""The streaming merge: one state-dict entry at a time, through any registered method.

Peak memory is one entry's stack of T task tensors (plus the method's workspace) and the output;
checkpoints stay memory-mapped. Entries that no task changed are never materialized: their merged
value is θ0's own (file-backed) tensor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..utils.errors import UserError
from .parallel import default_workers, map_in_order
from .registry import EntryMerge, MergeMethod, build_method
from .task_vectors import ELEMENTWISE_BLOCK_BYTES, TaskEntry, TaskVectors, workspace_bytes
from .tsv import LowRankFactors


class NonFiniteResultError(UserError, ValueError):
    """A merged tensor holds NaN or ±inf (e.g. a too large α overflowing a float16 model); it is never written."""


@dataclass
class MergeResult:
    """τMT and / or per-task vectors of a merge. Missing keys mean a zero task vector."""

    method: MergeMethod
    keys: list[str]
    num_tasks: int
    task_vector: dict[str, Tensor] | None = None
    per_task: dict[str, list[Tensor | LowRankFactors | None]] | None = None
    masks: dict[str, Tensor] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_labels(self) -> tuple[Any, ...]:
        return self.method.mask_labels()

    def task_specific_vector(self, task: int, choice: int = 0) -> Iterator[tuple[str, Tensor]]:
        """Task ``task``'s own vector, entry by entry: TSV-C's compression or τMT ⊙ its mask.

        ``choice`` indexes ``mask_labels`` (TALL's λ). Entries are produced lazily so that a caller
        can write or apply them without holding a second model in memory.
        """
        if self.per_task is not None:
            for key, values in self.per_task.items():
                value = values[task]
                if value is not None:
                    yield key, value.materialize() if isinstance(value, LowRankFactors) else value
        elif self.masks is not None and self.task_vector is not None:
            for key, tau in self.task_vector.items():
                yield key, tau * (self.masks[key][task] > choice)
        else:
            raise ValueError(f"method {self.method.name!r} has no task-specific vectors")

    def task_mask(self, task: int, choice: int = 0) -> Iterator[tuple[str, Tensor]]:
        """Task ``task``'s boolean mask per changed entry (TALL / magnitude masks)."""
        if self.masks is None:
            raise ValueError(f"method {self.method.name!r} produces no masks")
        for key, levels in self.masks.items():
            yield key, levels[task] > choice


def flat_task_masks(result: MergeResult, tasks: TaskVectors, choices: Sequence[int]) -> dict[str, np.ndarray]:
    """Each task's mask at its chosen mask choice, flat over every θ0 entry in sorted key order.

    This is the published TALL-mask layout (SPEC §1), keyed by task name without the ``Val`` suffix.
    """
    offsets = tasks.flat_offsets()
    total = max((end for _, end in offsets.values()), default=0)
    masks = {}
    for task, (name, choice) in enumerate(zip(tasks.names, choices, strict=True)):
        flat = np.zeros(total, dtype=bool)
        for key, mask in result.task_mask(task, choice):
            start, end = offsets[key]
            flat[start:end] = mask.flatten().numpy()
        masks[name.removesuffix("Val")] = flat
    return masks


def merge(method: MergeMethod | str, tasks: TaskVectors, params: Mapping[str, Any] | None = None, *,
          progress: bool = True, workers: int | None = None) -> MergeResult:
    """Run ``method`` over every entry of ``tasks`` and collect its outputs on the CPU.

    On the CPU, ``workers`` entries (default: one per core) are merged concurrently, each with one
    BLAS thread: the LAPACK routines that dominate the SVD-based methods use several cores poorly
    within one call, but independent calls scale. At most ``workers`` entries are in memory at once.
    """
    if isinstance(method, str):
        method = build_method(method, params)
    elif params:
        raise ValueError("params are given with the method name, not with a built method")
    workers = default_workers(tasks.device) if workers is None else workers
    started = time.perf_counter()
    method.prepare(tasks, progress=progress, workers=workers)
    result = MergeResult(method=method, keys=list(tasks.keys), num_tasks=tasks.num_tasks)
    changed = (entry for entry in tasks.entries(f"merge ({method.name})", progress=progress) if entry.changed)
    cost = lambda entry: workspace_bytes(entry.shape, tasks.num_tasks)  # noqa: E731
    for key, out in map_in_order(lambda entry: merge_entry_in_blocks(method, entry), changed, workers, cost=cost):
        if out.task_vector is not None:
            result.task_vector = result.task_vector or {}
            result.task_vector[key] = out.task_vector.cpu()
        if out.per_task is not None:
            result.per_task = result.per_task or {}
            result.per_task[key] = [_to_cpu(v) for v in out.per_task]
        if out.masks is not None:
            result.masks = result.masks or {}
            result.masks[key] = out.masks.cpu()
    if result.task_vector is not None:
        _rescale_in_place(method, result.task_vector, method.rescaled_keys(tasks.own_keys))
    if method.task_specific and result.masks is None and result.per_task is None:
        result.per_task = {}  # no task changed anything: every task-specific vector is zero
    if result.task_vector is None and result.per_task is None:
        result.task_vector = {}
    result.stats = {"seconds": time.perf_counter() - started, **method.finalize(tasks)}
    return result


def _rescale_in_place(method: MergeMethod, task_vector: dict[str, Tensor], keys: Sequence[str]) -> None:
    """Apply the method's whole-model rescaling (:meth:`MergeMethod.rescale`) to the merged entries ``keys``; an
    entry no task changed counts with norm 0 and stays absent."""
    if not keys:
        return
    norms = {key: float(torch.linalg.vector_norm(task_vector[key])) if key in task_vector else 0.0 for key in keys}
    for key, factor in method.rescale(norms).items():
        if key in task_vector:
            task_vector[key].mul_(factor)


def merge_entry_in_blocks(method: MergeMethod, entry: TaskEntry,
                          block_bytes: int = ELEMENTWISE_BLOCK_BYTES) -> EntryMerge:
    """``method.merge_entry(entry)``, computed block of rows by block of rows when the method acts value by value
    on this entry and its task stack would exceed ``block_bytes``: the same result, a bounded workspace. An entry
    changed only by LoRA updates goes through the factors when the method merges them exactly."""
    if entry.factored and method.merges_factors():
        return EntryMerge(task_vector=method.merge_factors(entry).materialize())
    blocks = entry.row_blocks(block_bytes) if method.elementwise_on(entry) else [entry]
    if len(blocks) == 1:
        return method.merge_entry(entry)
    task_vector: Tensor | None = None
    masks: Tensor | None = None
    start = 0
    for block in blocks:  # each block's result goes straight into the entry's output: no second copy of it
        part = method.merge_entry(block)
        if part.per_task is not None:
            raise ValueError(f"{method.name}: per-task outputs cannot be merged block by block")
        rows = block.shape[0]
        if part.task_vector is not None:
            if task_vector is None:
                task_vector = part.task_vector.new_empty(entry.shape)
            task_vector[start:start + rows] = part.task_vector
        if part.masks is not None:
            if masks is None:
                masks = part.masks.new_empty((part.masks.shape[0], *entry.shape))
            masks[:, start:start + rows] = part.masks
        start += rows
    return EntryMerge(task_vector=task_vector, masks=masks)


def _to_cpu(value: Tensor | LowRankFactors | None) -> Tensor | LowRankFactors | None:
    return None if value is None else value.to("cpu")


def apply_task_vector(pretrained: Mapping[str, Tensor],
                      task_vector: Mapping[str, Tensor] | Iterator[tuple[str, Tensor]],
                      alpha: float = 1.0, *, inplace: bool = False,
                      scaled: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """θ0 + α·τ for every entry of θ0, computed in float32 and stored in θ0's dtypes; entries for which
    ``scaled(key)`` is false get θ0 + τ (a method that scales only part of τMT: ESM).

    Entries absent from ``task_vector`` are θ0's own tensors (not copied). With ``inplace`` the
    task-vector tensors are reused as output buffers, so no second model-sized buffer is allocated.
    Raises NonFiniteResultError rather than return an entry holding NaN or ±inf.
    """
    if not math.isfinite(alpha):
        raise NonFiniteResultError(f"the scaling coefficient α must be a finite number, got {alpha}")
    items = task_vector.items() if isinstance(task_vector, Mapping) else task_vector
    merged: dict[str, Tensor] = {key: pretrained[key] for key in sorted(pretrained.keys())}
    for key, tau in items:
        coefficient = alpha if scaled is None or scaled(key) else 1.0
        merged[key] = apply_entry(pretrained[key], tau, coefficient, key, inplace=inplace)
    return merged


def apply_entry(base: Tensor, tau: Tensor | None, alpha: float, key: str, *, dtype: torch.dtype | None = None,
                inplace: bool = False) -> Tensor:
    """One entry of θ0 + α·τ, computed in float32 and stored in ``dtype`` (default θ0's; integer entries keep
    theirs). ``tau`` None is a zero task vector (θ0's own tensor, cast). Raises NonFiniteResultError on NaN / ±inf.
    """
    dtype = dtype if dtype is not None and base.is_floating_point() else base.dtype
    if tau is None:
        return base.to(dtype)
    if tau.shape != base.shape:
        raise ValueError(f"task vector entry {key!r} has shape {tuple(tau.shape)}, θ0 has {tuple(base.shape)}")
    out = tau if inplace and tau.dtype == torch.float32 else tau.to(torch.float32, copy=True)
    out.mul_(alpha).add_(base.to(out.device, torch.float32))
    return _finite(out.to("cpu", dtype), key, alpha)


def entry_task_vectors(out: EntryMerge | None, num_outputs: int, choice: int = 0) -> list[Tensor | None]:
    """The task vector of each output model from one entry's merge: τMT for a shared model (one output), each
    task's own (TSV-C's compression, or τMT ⊙ the task's mask at mask choice ``choice``) for task-specific ones.
    None: the output keeps θ0's entry."""
    if out is None:
        return [None] * num_outputs
    if out.per_task is not None:
        return [value.materialize() if isinstance(value, LowRankFactors) else value for value in out.per_task]
    if out.masks is not None and num_outputs > 1:
        assert out.task_vector is not None
        return [out.task_vector * (out.masks[task] > choice) for task in range(num_outputs)]
    return [out.task_vector] * num_outputs


def stream_merged_entries(method: MergeMethod, tasks: TaskVectors, keys: Sequence[str], *, alpha: float,
                          dtype: torch.dtype | None = None, choice: int = 0, workers: int | None = None,
                          progress: bool = False) -> Iterator[tuple[str, list[Tensor]]]:
    """``(key, [merged tensor per output model])`` for each of ``keys`` in order, on the CPU, ready to write.

    ``method.prepare`` must have run. One output for a shared model, one per task for task-specific methods. Each
    entry is read, merged and combined with θ0 by a worker, so at most ``workers`` entries' task stacks (plus the
    outputs waiting to be written in order) are in memory: never a whole model.
    """
    num_outputs = tasks.num_tasks if method.task_specific else 1
    workers = default_workers(tasks.device) if workers is None else workers
    held = _held_entries(method, tasks, keys, workers, progress)

    def merged(key: str) -> list[Tensor]:
        if not tasks.is_mergeable(key):
            base = tasks.pretrained[key]
            return [base] * num_outputs
        entry = tasks.entry(key)
        if key in held:
            tau = held.pop(key)
            out = None if tau is None else EntryMerge(task_vector=tau)
        else:
            out = merge_entry_in_blocks(method, entry) if entry.changed else None
        taus = entry_task_vectors(out, num_outputs, choice)
        # A merge's outputs are tensors of its own: each one not shared between outputs becomes θ0 + α·τ in place
        # (None is θ0's own entry, never written to).
        present = [id(tau) for tau in taus if tau is not None]
        distinct = len(set(present)) == len(present)
        coefficient = alpha if method.alpha_scaled(key) else 1.0
        return [apply_entry(entry.pretrained, tau, coefficient, key, dtype=dtype, inplace=distinct) for tau in taus]

    keys = tqdm(keys, desc=f"merge ({method.name})", disable=not progress, unit="entry", leave=False)
    yield from map_in_order(merged, keys, workers, label=lambda key: key,
                             cost=lambda key: workspace_bytes(tasks.shape(key), tasks.num_tasks))


def _held_entries(method: MergeMethod, tasks: TaskVectors, keys: Sequence[str], workers: int,
                  progress: bool) -> dict[str, Tensor | None]:
    """The merged entries a method rescales together (:meth:`MergeMethod.rescaled_keys`), merged first, rescaled
    and held until their turn to be written (None: no task changed the entry). They are all of the whole model's
    ones, so that a process writing only some shards still rescales with the same norms."""
    rescaled = method.rescaled_keys(tasks.keys)
    if not rescaled:
        return {}
    if tasks.collective.world_size > 1:
        raise ValueError(f"{method.name} rescales entries by whole-model norms: run it in a single process")

    def one(key: str) -> Tensor | None:
        entry = tasks.entry(key)
        return merge_entry_in_blocks(method, entry).task_vector if entry.changed else None

    bar = tqdm(rescaled, desc=f"merge ({method.name}, rescaled entries)", disable=not progress, unit="entry",
               leave=False)
    merged = {key: (None if tau is None else tau.cpu()) for key, tau in map_in_order(
        one, bar, workers, label=lambda key: key, cost=lambda key: workspace_bytes(tasks.shape(key), tasks.num_tasks))}
    present = {key: tau for key, tau in merged.items() if tau is not None}
    _rescale_in_place(method, present, rescaled)
    wanted = set(keys)
    return {key: tau for key, tau in merged.items() if key in wanted}


def _finite(value: Tensor, key: str, alpha: float) -> Tensor:
    """``value`` itself, checked to hold no NaN / ±inf before it can reach a file."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise NonFiniteResultError(
            f"the merged entry {key!r} would hold {bad} NaN or infinite value(s) ({value.dtype}, α={alpha:g}); "
            "nothing was written. Use a smaller α, or check the inputs."
        )
    return value
