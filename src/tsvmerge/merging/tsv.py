"""Task Singular Vectors: the per-layer math of TSV-M, TSV-C and their ablations (SPEC §3).

All functions act on one state-dict entry given as the stack of its task matrices
``deltas [T, rows, cols]`` and are pure: no I/O, no global state, any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .svd import (
    SVDMode,
    TruncatedSVD,
    gram_polar_factor,
    polar_factor,
    significant_components,
    truncated_svd,
    whitening,
)

Orthogonalization = Literal["procrustes", "whitening", "none"]


def uses_svd(key: str, shape: torch.Size | tuple[int, ...], *, include_text_projection: bool = False) -> bool:
    """TSV treats 2-D entries as matrices; ``text_projection`` is averaged like a vector in TSV-M."""
    return len(shape) == 2 and (include_text_projection or "text_projection" not in key)


def components_per_task(rows: int, cols: int, num_tasks: int) -> int:
    """k = floor(min(rows, cols) / T): each task keeps the top 1/T of its singular components."""
    return min(rows, cols) // num_tasks


@dataclass(frozen=True)
class TaskSingularVectors:
    """The concatenation ``Û, ŝ, V̂`` of the top-k components of every task, in task order.

    ``U`` is [rows, T'k], ``s`` is [T'k], ``V`` is [cols, T'k], where T' counts the tasks whose
    matrix is not all zero (an unchanged layer contributes nothing, SPEC §3).
    """

    U: Tensor
    s: Tensor
    V: Tensor
    k: int

    def reconstruct(self) -> Tensor:
        return (self.U * self.s) @ self.V.mT


def nonzero_tasks(deltas: Tensor) -> Tensor:
    """Indices of the tasks whose matrix has a non-zero entry."""
    return torch.linalg.vector_norm(deltas.flatten(1), ord=torch.inf, dim=1).nonzero().flatten()


def task_singular_vectors(deltas: Tensor, k: int | None = None, svd: SVDMode = "exact", *,
                          num_tasks: int | None = None, all_nonzero: bool = False) -> TaskSingularVectors:
    """Top-k SVD of each task matrix, concatenated across tasks (Algorithm 1, lines 1-6).

    ``deltas`` is [T, rows, cols]; ``k`` defaults to floor(min(rows, cols) / num_tasks), where
    ``num_tasks`` (default T) counts every merged task, also those whose matrix was left out of
    ``deltas`` because it is all zero. Wide matrices are decomposed through their transpose
    (identical result, several times faster on CPU). Callers that already know every matrix is
    non-zero (the engine's ``TaskEntry.changed``) pass ``all_nonzero`` to skip the scan for zero tasks.
    """
    _, rows, cols = deltas.shape
    num_tasks = deltas.shape[0] if num_tasks is None else num_tasks
    k = components_per_task(rows, cols, num_tasks) if k is None else k
    if not all_nonzero:
        nonzero = nonzero_tasks(deltas)
        deltas = deltas if nonzero.numel() == deltas.shape[0] else deltas[nonzero]
    if deltas.shape[0] == 0:
        empty = deltas.new_zeros
        return TaskSingularVectors(empty(rows, 0), empty(0), empty(cols, 0), k)
    wide = rows < cols
    batch = deltas.mT if wide else deltas
    parts: TruncatedSVD = truncated_svd(batch, k, svd)
    U, Vh = parts.U, parts.Vh
    if wide:
        U, Vh = Vh.mT, U.mT
    s = parts.s
    keep = significant_components(s, rows, cols)
    if not bool(keep.all()):  # null directions of rank-deficient tasks: zero columns carry nothing into Procrustes
        s, U, Vh = s * keep, U * keep.unsqueeze(-2), Vh * keep.unsqueeze(-1)
    U_hat = U.permute(1, 0, 2).reshape(rows, -1)
    V_hat = Vh.permute(2, 0, 1).reshape(cols, -1)
    return TaskSingularVectors(U_hat, s.reshape(-1), V_hat, k)


def orthogonalize(tsv: TaskSingularVectors, method: Orthogonalization = "procrustes", *,
                  approximate: bool = False) -> TaskSingularVectors:
    """Decorrelate the concatenated singular vectors (Algorithm 1, lines 7-8).

    ``approximate`` (what ``svd="randomized"`` implies) takes every Procrustes polar factor through
    the Gram matrix (:func:`gram_polar_factor`): about twice as fast, float32-approximate.
    """
    if method == "none":
        return tsv
    if method == "procrustes":
        if approximate:
            # Each task's k singular vectors are orthonormal: the Gram matrix's diagonal blocks are known.
            # (not when null components were zeroed: those columns are not orthonormal)
            block = tsv.k if tsv.k and bool((tsv.s > 0).all()) and tsv.U.shape[1] % tsv.k == 0 else None
            return TaskSingularVectors(gram_polar_factor(tsv.U, block), tsv.s, gram_polar_factor(tsv.V, block), tsv.k)
        return TaskSingularVectors(polar_factor(tsv.U), tsv.s, polar_factor(tsv.V), tsv.k)
    if method == "whitening":
        # SPEC: singular values sorted ascending (stable), vectors permuted alike, then whitened.
        s, order = torch.sort(tsv.s, stable=True)
        U, V = tsv.U[:, order], tsv.V[:, order]
        return TaskSingularVectors(whitening(U), s, whitening(V), tsv.k)
    raise ValueError(f"unknown orthogonalization {method!r}; choose procrustes, whitening or none")


def tsv_merge_matrix(deltas: Tensor, k: int | None = None, *, orthogonalization: Orthogonalization = "procrustes",
                     svd: SVDMode = "exact", num_tasks: int | None = None) -> Tensor:
    """TSV-M for one matrix entry: U⊥ diag(ŝ) V⊥ᵀ (``orthogonalization="none"`` gives the low-rank sum)."""
    tsv = task_singular_vectors(deltas, k, svd, num_tasks=num_tasks)
    if tsv.s.numel() == 0:  # no task changed this matrix, or k = 0
        return torch.zeros_like(deltas[0])
    return orthogonalize(tsv, orthogonalization, approximate=svd == "randomized").reconstruct()


def mean_of_tasks(deltas: Tensor) -> Tensor:
    """Non-matrix entries (biases, norms, conv stems, ``text_projection``) are averaged, not summed."""
    return deltas.mean(dim=0)


@dataclass(frozen=True)
class LowRankFactors:
    """A rank-k matrix ``U diag(s) Vᵀ`` stored as its factors: TSV-C's compressed task vector."""

    U: Tensor  # [rows, k]
    s: Tensor  # [k]
    V: Tensor  # [cols, k]

    def materialize(self) -> Tensor:
        return (self.U * self.s) @ self.V.mT

    @property
    def numel(self) -> int:
        """Stored numbers: k (rows + cols + 1), the storage accounting of SPEC §3."""
        return self.U.numel() + self.s.numel() + self.V.numel()

    def to(self, device: torch.device | str) -> "LowRankFactors":
        return LowRankFactors(self.U.to(device), self.s.to(device), self.V.to(device))


def tsv_compress_matrix(deltas: Tensor, k: int | None = None, svd: SVDMode = "exact") -> list[LowRankFactors]:
    """TSV-C for one matrix entry: each task's rank-k truncation (Eckart--Young optimal)."""
    num_tasks, rows, cols = deltas.shape
    k = components_per_task(rows, cols, num_tasks) if k is None else k
    wide = rows < cols
    parts = truncated_svd(deltas.mT if wide else deltas, k, svd)
    U, Vh = (parts.Vh.mT, parts.U.mT) if wide else (parts.U, parts.Vh)
    return [LowRankFactors(U[t], parts.s[t], Vh[t].mT) for t in range(num_tasks)]
