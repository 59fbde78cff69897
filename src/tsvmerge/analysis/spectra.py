"""Singular-value spectra of the task matrices, per layer and task (the low-rank structure of Sec. 3; no data).

For every 2-D entry and task: the singular values of τi, the fraction of its energy (Σσ²) kept by the top
fraction of components, and the smallest fraction of components that keeps 90 / 95 / 99 % of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..merging import TaskVectors
from .common import block_index, layer_label, matrix_entries

__all__ = ["ENERGY_LEVELS", "energy_curve", "layer_spectra", "rank_for_energy"]

ENERGY_LEVELS = (0.9, 0.95, 0.99)


def energy_curve(singular_values: torch.Tensor) -> torch.Tensor:
    """Cumulative fraction of Σσ² kept by the top 1, 2, ..., r components (all ones for a zero matrix)."""
    energy = singular_values.double().square()
    total = energy.sum()
    if total == 0:
        return torch.ones_like(energy)
    return energy.cumsum(0) / total


def rank_for_energy(singular_values: torch.Tensor, level: float) -> int:
    """The smallest number of top components whose energy fraction reaches ``level``."""
    curve = energy_curve(singular_values)
    return int(torch.searchsorted(curve, torch.tensor(level - 1e-12, dtype=curve.dtype)).item()) + 1


def layer_spectra(tasks: TaskVectors, *, keys: Sequence[str] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Singular values of every task matrix of every 2-D entry (``keys`` to restrict).

    Returns ``{"tasks": names, "per_entry": {key: {"shape", "label", "block_index", "singular_values":
    {task: [σ1 ≥ σ2 ≥ ...]}, "rank_for_energy": {task: {"0.9": n, ...}}}}}``; tasks that left an entry unchanged
    are absent from its entry.
    """
    per_entry: dict[str, Any] = {}
    for entry in matrix_entries(tasks, keys=keys, progress=progress, description="spectra"):
        values = torch.linalg.svdvals(entry.deltas(entry.changed)).cpu()
        names = [tasks.names[i] for i in entry.changed]
        per_entry[entry.key] = {
            "shape": list(entry.shape), "label": layer_label(entry.key), "block_index": block_index(entry.key),
            "singular_values": {n: v.tolist() for n, v in zip(names, values, strict=True)},
            "rank_for_energy": {n: {str(level): rank_for_energy(v, level) for level in ENERGY_LEVELS}
                                for n, v in zip(names, values, strict=True)},
        }
    return {"tasks": list(tasks.names), "per_entry": per_entry}
