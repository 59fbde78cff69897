"""Singular Task Interference (Eq. 7 of the paper, SPEC §3).

STI = Σ |(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)|: how much the task-specific singular vectors of one layer
overlap, weighted by their singular values. Zero when every task's subspace is orthogonal to the
others', which is what TSV-M's orthogonalization enforces.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .svd import SVDMode
from .tsv import TaskSingularVectors, orthogonalize, task_singular_vectors


def singular_task_interference(tsv: TaskSingularVectors) -> float:
    """Entry-wise L1 norm of (ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)."""
    eye = torch.eye(tsv.s.numel(), dtype=tsv.U.dtype, device=tsv.U.device)
    left = tsv.U.mT @ tsv.U - eye
    right = tsv.V.mT @ tsv.V - eye
    return float(((left * tsv.s) @ right).abs().sum())


def layer_interference(deltas: Tensor, *, full_rank: bool = False, svd: SVDMode = "exact") -> dict[str, float]:
    """STI of one matrix entry before and after TSV-M's Procrustes orthogonalization.

    ``full_rank`` keeps every singular component of every task instead of the top 1/T.
    """
    k = min(deltas.shape[-2:]) if full_rank else None
    tsv = task_singular_vectors(deltas, k, "full" if full_rank else svd)
    return {
        "before": singular_task_interference(tsv),
        "after": singular_task_interference(orthogonalize(tsv, "procrustes")),
    }


_BLOCK_PATTERN = re.compile(r"^(?P<block>.*?(?:resblocks|layers?|blocks?|h)\.\d+)\.")


def transformer_block(key: str) -> str | None:
    """The transformer block an entry belongs to (``...resblocks.3.attn.in_proj_weight`` → ``...resblocks.3``)."""
    match = _BLOCK_PATTERN.match(key)
    return match.group("block") if match else None


def interference_per_block(per_entry: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Sum per-entry STI over each transformer block's attention and MLP matrices."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, values in per_entry.items():
        block = transformer_block(key)
        if block is None:
            continue
        for name, value in values.items():
            totals[block][name] += value
    return {block: dict(values) for block, values in totals.items()}


def block_overlap(gram: Tensor, sizes: Sequence[int]) -> list[list[dict[str, float]]]:
    """Per pair of task blocks of a Gram matrix: mean |entry| and Frobenius norm of (G − I) on that block."""
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    off = gram.double() - torch.eye(gram.shape[0], dtype=torch.float64)
    table = []
    for i in range(len(sizes)):
        row = []
        for j in range(len(sizes)):
            block = off[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]
            row.append({"mean_abs": float(block.abs().mean()) if block.numel() else math.nan,
                        "frobenius": float(torch.linalg.matrix_norm(block)) if block.numel() else math.nan})
        table.append(row)
    return table
