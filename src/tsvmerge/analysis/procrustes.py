"""Procrustes approximation error ‖Û − U⊥‖F per layer, full rank vs low rank (Fig. 5; no data).

U⊥ = P Qᵀ for Û = P D Qᵀ is the matrix with orthonormal columns (rows, when Û is wide as in a full-rank
concatenation of T > 1 tasks) nearest to Û; the error measures how far TSV-M has to move the task singular
vectors to decorrelate them. With D = diag(d), ‖Û − U⊥‖F = ‖d − 1‖₂. Relative errors divide by ‖Û‖F.
"""

from __future__ import annotations

from typing import Any

import torch

from ..merging import TaskVectors
from ..merging.svd import polar_factor
from ..merging.tsv import TaskSingularVectors
from .common import block_index, layer_label, matrix_entries
from .interference import decompose_layer

__all__ = ["procrustes_error", "procrustes_errors", "procrustes_table"]


def procrustes_error(A: torch.Tensor) -> tuple[float, float]:
    """``(‖A − polar(A)‖F, that / ‖A‖F)``."""
    err = float(torch.linalg.matrix_norm(A - polar_factor(A)))
    norm = float(torch.linalg.matrix_norm(A))
    return err, (err / norm if norm else 0.0)


def procrustes_errors(tsv: TaskSingularVectors) -> dict[str, float]:
    u, u_rel = procrustes_error(tsv.U)
    v, v_rel = procrustes_error(tsv.V)
    return {"U": u, "V": v, "U_relative": u_rel, "V_relative": v_rel}


def procrustes_table(tasks: TaskVectors, *, progress: bool = False) -> dict[str, Any]:
    """``{"per_entry": {key: {"full_rank": {U, V, U_relative, V_relative}, "low_rank": {...}, "label", ...}}}``."""
    per_entry: dict[str, Any] = {}
    for entry in matrix_entries(tasks, progress=progress, description="Procrustes"):
        layer = decompose_layer(entry.deltas(entry.changed), entry.num_tasks)
        per_entry[entry.key] = {
            "label": layer_label(entry.key), "block_index": block_index(entry.key), "shape": list(entry.shape),
            "k": layer.k, "full_rank": procrustes_errors(layer.full), "low_rank": procrustes_errors(layer.low_rank()),
        }
    return {"tasks": list(tasks.names), "per_entry": per_entry}
