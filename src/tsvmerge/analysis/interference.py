"""Singular Task Interference (SPEC §3, Eq. 7) of whole checkpoints: the numbers of Fig. 3, 6 / 14 and 8.

For every 2-D entry TSV decomposes, the task matrices' singular vectors are concatenated either in full rank
(every component of every task) or in low rank (the top k = ⌊r/T⌋ per task, as TSV-M), and

    STI = Σ |(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)|

is computed before and after TSV-M's Procrustes orthogonalization. One full SVD per task and entry serves both
ranks. Only checkpoints are read; nothing is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from ..merging import TaskVectors
from ..merging.interference import block_overlap, interference_per_block, transformer_block
from ..merging.registry import ablation_rows
from ..merging.tsv import TaskSingularVectors, components_per_task, orthogonalize, task_singular_vectors
from .common import block_index, layer_label, matrix_entries

__all__ = [
    "VARIANTS",
    "GramData",
    "LayerDecomposition",
    "block_overlap",
    "decompose_layer",
    "gram_data",
    "interference_table",
    "select_layer",
    "sti",
    "sti_variants",
]

#: The STI variants reported per entry: (rank, orthogonalization).
VARIANTS = ("full_rank_before", "full_rank_after", "low_rank_before", "low_rank_after")
VARIANT_LABELS = {
    "full_rank_before": "full rank",
    "full_rank_after": "full rank, orthogonalized",
    "low_rank_before": "rank ⌊r/T⌋ per task",
    "low_rank_after": "rank ⌊r/T⌋, orthogonalized (TSV-M)",
}


def sti(tsv: TaskSingularVectors, chunk_size: int = 2048) -> float:
    """Eq. 7, entry-wise L1 norm of (ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I), row block by row block.

    Same value as :func:`tsvmerge.merging.interference.singular_task_interference`, but holds one N×N matrix
    (N = number of concatenated components) instead of three, which matters for full-rank concatenations
    (N = T·r: 6144 for 8 ViT-B-32 tasks). Accumulated in float64.
    """
    U, s, V = tsv.U, tsv.s, tsv.V
    n = s.numel()
    if n == 0:
        return 0.0
    right = V.mT @ V
    right.diagonal().sub_(1.0)
    total = torch.zeros((), dtype=torch.float64, device=U.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        left = U[:, start:stop].mT @ U  # rows start..stop of ÛᵀÛ
        left[:, start:stop].diagonal().sub_(1.0)
        total += ((left * s) @ right).abs().sum(dtype=torch.float64)
    return float(total)


@dataclass(frozen=True)
class LayerDecomposition:
    """Every task's full thin SVD of one entry, concatenated task by task (``Û`` is [rows, T'·r])."""

    full: TaskSingularVectors
    num_tasks: int  # T, including the tasks that left this entry unchanged (they define k)
    active: int  # T', the tasks with a non-zero matrix (the blocks of Û)

    @property
    def rank(self) -> int:
        return self.full.k

    @property
    def k(self) -> int:
        rows, cols = self.full.U.shape[0], self.full.V.shape[0]
        return components_per_task(rows, cols, self.num_tasks)

    def truncated(self, k: int) -> TaskSingularVectors:
        """The top ``k`` components of every task, concatenated in task order (TSV-M's Û, ŝ, V̂ for k = ⌊r/T⌋)."""
        r = self.rank
        if not 0 <= k <= r:
            raise ValueError(f"k={k} is outside [0, {r}]")
        U = self.full.U.reshape(self.full.U.shape[0], self.active, r)[:, :, :k].reshape(self.full.U.shape[0], -1)
        V = self.full.V.reshape(self.full.V.shape[0], self.active, r)[:, :, :k].reshape(self.full.V.shape[0], -1)
        s = self.full.s.reshape(self.active, r)[:, :k].reshape(-1)
        return TaskSingularVectors(U, s, V, k)

    def low_rank(self) -> TaskSingularVectors:
        return self.truncated(self.k)


def decompose_layer(deltas: Tensor, num_tasks: int | None = None) -> LayerDecomposition:
    """Full SVD of each task matrix of ``deltas`` [T', rows, cols] (all-zero tasks are left out, SPEC §3)."""
    num_tasks = deltas.shape[0] if num_tasks is None else num_tasks
    rank = min(deltas.shape[-2:])
    full = task_singular_vectors(deltas, rank, "full", num_tasks=num_tasks)
    active = full.s.numel() // rank if rank else 0
    return LayerDecomposition(full, num_tasks, active)


def sti_variants(layer: LayerDecomposition, *, full_rank: bool = True, chunk_size: int = 2048) -> dict[str, float]:
    """STI of one entry in low rank (and full rank), before and after Procrustes orthogonalization."""
    low = layer.low_rank()
    out = {"low_rank_before": sti(low, chunk_size), "low_rank_after": sti(orthogonalize(low), chunk_size)}
    if full_rank:
        out = {"full_rank_before": sti(layer.full, chunk_size),
               "full_rank_after": sti(orthogonalize(layer.full), chunk_size), **out}
    return out


def interference_table(tasks: TaskVectors, *, full_rank: bool = True, chunk_size: int = 2048,
                       progress: bool = False) -> dict[str, Any]:
    """STI of every 2-D entry of the checkpoints, per transformer block and in total.

    Returns ``{"per_entry": {key: {variant: STI}}, "entries": {key: {shape, k, block, block_index, label}},
    "per_block": {block: {variant: Σ}}, "total": {variant: Σ over all entries}}``.
    """
    per_entry: dict[str, dict[str, float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for entry in matrix_entries(tasks, progress=progress, description="STI"):
        layer = decompose_layer(entry.deltas(entry.changed), entry.num_tasks)
        per_entry[entry.key] = sti_variants(layer, full_rank=full_rank, chunk_size=chunk_size)
        meta[entry.key] = {"shape": list(entry.shape), "k": layer.k, "tasks_changed": len(entry.changed),
                           "block": transformer_block(entry.key), "block_index": block_index(entry.key),
                           "label": layer_label(entry.key)}
    variants = [v for v in VARIANTS if any(v in values for values in per_entry.values())]
    total = {v: sum(values[v] for values in per_entry.values()) for v in variants}
    return {"per_entry": per_entry, "entries": meta, "per_block": interference_per_block(per_entry),
            "total": total, "tasks": list(tasks.names)}


# --------------------------------------------------------------------------------------- Gram heat-map (Fig. 3)

def select_layer(keys: Sequence[str], layer: str | None) -> str:
    """The entry to draw: ``layer`` matched exactly, else as a regular expression (first match in key order);
    by default the attention input projection of the middle transformer block."""
    keys = list(keys)
    if not keys:
        raise ConfigError("the checkpoints have no 2-D entry changed by the tasks")
    if layer:
        if layer in keys:
            return layer
        pattern = re.compile(layer)
        found = [k for k in keys if pattern.search(k)]
        if not found:
            raise ConfigError(f"no 2-D entry matches layer={layer!r}; entries: {', '.join(keys)}")
        return found[0]
    blocks = sorted({block_index(k) for k in keys if block_index(k) is not None})
    if blocks:
        middle = blocks[len(blocks) // 2]
        in_block = [k for k in keys if block_index(k) == middle]
        attention = [k for k in in_block if "in_proj" in k or "attn" in k]
        return (attention or in_block)[0]
    return keys[0]


@dataclass(frozen=True)
class GramData:
    """ÛᵀÛ and V̂ᵀV̂ of one entry (before, and after orthogonalization), with the task blocks."""

    key: str
    rank: str  # "low" or "full"
    tasks: list[str]
    block_sizes: list[int]
    grams: dict[str, dict[str, Tensor]]  # {"before"|"after": {"U": [N, N], "V": [N, N]}}
    sti: dict[str, float]


def gram_data(tasks: TaskVectors, key: str, *, rank: str = "low", chunk_size: int = 2048) -> GramData:
    """The Gram matrices of the concatenated singular vectors of ``key`` (Fig. 3)."""
    if rank not in ("low", "full"):
        raise ValueError(f"rank must be low or full, got {rank!r}")
    entry = tasks.entry(key)
    if len(entry.shape) != 2 or not entry.changed:
        raise ConfigError(f"{key} is not a 2-D entry changed by the tasks")
    layer = decompose_layer(entry.deltas(entry.changed), entry.num_tasks)
    tsv = layer.low_rank() if rank == "low" else layer.full
    grams, values = {}, {}
    for stage, vectors in (("before", tsv), ("after", orthogonalize(tsv))):
        grams[stage] = {"U": (vectors.U.mT @ vectors.U).cpu(), "V": (vectors.V.mT @ vectors.V).cpu()}
        values[stage] = sti(vectors, chunk_size)
    names = [tasks.names[i] for i in entry.changed]
    return GramData(key, rank, names, [tsv.k] * len(names), grams, values)


# --------------------------------------------------------------------------------- STI vs accuracy (Fig. 8)

#: Which concatenation each method's merge corresponds to (Fig. 8 default): the methods of the ablation of Table 4
#: (their ``ablation`` trait).
METHOD_STI_VARIANT = {name: row.sti_variant for name, row in ablation_rows().items()}


def sti_accuracy_points(totals: Mapping[str, Mapping[str, float]], accuracies: Mapping[tuple[str, str], Any],
                        methods: Mapping[str, str], sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    """One point per (method, task set): the total STI of the method's variant and its test accuracy.

    ``totals`` is {task-set label: {variant: total STI}}, ``accuracies`` {(method, label): result payload},
    ``sizes`` {label: number of tasks}. A missing result file gives a point with empty accuracy (listed, never
    invented).
    """
    points = []
    for method, variant in methods.items():
        for label, total in totals.items():
            payload = accuracies.get((method, label)) or {}
            test = payload.get("test", {})
            points.append({
                "method": method, "tasks": label, "num_tasks": sizes[label], "variant": variant,
                "sti": total.get(variant), "avg_top1": test.get("avg_top1"),
                "avg_normalized_top1": test.get("avg_normalized_top1"), "result_file": payload.get("_path"),
            })
    return points
