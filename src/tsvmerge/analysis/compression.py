"""TSV-C vs TALL masks: storage of what each keeps, and accuracy (Table 3 and Appendix B.3).

Storage is counted on the tensors the two methods actually produce for the given checkpoints (their
``merge_entry`` outputs, streamed one entry at a time so that nothing model-sized is held):

- TSV-C keeps, per task, the factors U (rows×k), s (k), V (cols×k) of every 2-D entry and the other entries the
  task changed, whole;
- TALL masks keep the merged vector τMT (every changed entry) once, plus one bit per entry of τMT per task
  (bit-packed masks);
- the reference is the T individual task vectors (every entry each task changed, float32).

Entries no task changed (CLIP's text embeddings) need no storage: θ0 has them. Sizes are bytes of the tensors'
own dtype (float32 as the merge produces them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from ..merging import TaskVectors, build_method, method_parameters
from ..merging.registry import EntryMerge, methods_where
from ..merging.tsv import LowRankFactors

__all__ = ["compared_methods", "entry_storage", "method_storage", "storage_table"]


def compared_methods() -> list[str]:
    """The task-specific methods compared in Table 3 (TALL masks, TSV-C: their ``storage_compared`` trait)."""
    return methods_where(lambda cls: cls.storage_compared)


def _nbytes(value: Any) -> int:
    if isinstance(value, LowRankFactors):
        return sum(x.numel() * x.element_size() for x in (value.U, value.s, value.V))
    return 0 if value is None else value.numel() * value.element_size()


def entry_storage(out: EntryMerge, num_tasks: int) -> tuple[int, list[int]]:
    """(shared bytes, bytes per task) of one entry's merge output.

    ``task_vector`` is shared; ``per_task`` values are each task's own; a mask is one bit per entry per task
    (its bytes are counted as bits / 8 here and rounded up once per task in :func:`method_storage`).
    """
    shared = _nbytes(out.task_vector)
    per_task = [0] * num_tasks
    if out.per_task is not None:
        per_task = [_nbytes(v) for v in out.per_task]
    if out.masks is not None:
        per_task = [p + out.masks[t].numel() for t, p in enumerate(per_task)]  # bits
    return shared, per_task


def method_storage(name: str, tasks: TaskVectors, params: Mapping[str, Any] | None = None, *,
                   progress: bool = False) -> dict[str, Any]:
    """Bytes kept by method ``name`` on ``tasks``: ``{"shared", "per_task": [...], "total"}``."""
    method = build_method(name, dict(params or {}))
    method.prepare(tasks, progress=progress)
    shared, per_task, mask_bits = 0, [0] * tasks.num_tasks, [0] * tasks.num_tasks
    for entry in tqdm(tasks.entries(), desc=f"{name} storage", disable=not progress, unit="entry", leave=False):
        if not entry.changed:
            continue
        out = method.merge_entry(entry)
        entry_shared, entry_tasks = entry_storage(out, tasks.num_tasks)
        shared += entry_shared
        target = mask_bits if out.masks is not None else per_task
        for t, value in enumerate(entry_tasks):
            target[t] += value
    per_task = [p + math.ceil(bits / 8) for p, bits in zip(per_task, mask_bits, strict=True)]
    return {"shared": shared, "per_task": per_task, "total": shared + sum(per_task)}


def individual_storage(tasks: TaskVectors) -> dict[str, Any]:
    """The T task vectors themselves, float32, over the entries each task changed."""
    per_task = [0] * tasks.num_tasks
    for entry in tasks.entries():
        for t in entry.changed:
            per_task[t] += entry.pretrained.numel() * 4
    return {"shared": 0, "per_task": per_task, "total": sum(per_task)}


def storage_table(tasks: TaskVectors, *, svd: str = "exact", progress: bool = False) -> dict[str, Any]:
    """Storage of the individual task vectors and of the :func:`compared_methods` (TALL masks, TSV-C), per task and
    in total (bytes); ``svd`` is the SVD solver of the methods that have one (TSV-C)."""
    rows = {"finetuned": individual_storage(tasks)}
    for name in compared_methods():
        params = {"svd": svd} if "svd" in method_parameters(name) else {}
        rows[name] = method_storage(name, tasks, params, progress=progress)
    reference = rows["finetuned"]["total"]
    for row in rows.values():
        row["relative_to_individual"] = row["total"] / reference if reference else math.nan
    return {"tasks": list(tasks.names), "methods": rows}
