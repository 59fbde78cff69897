"""LoRA task vectors in factored form: exact SVDs from the factors, and low-rank results kept as factors.

A task vector ΔW = s·B·A (B [m, r], A [r, n]) has rank at most r, and its thin SVD is exact from two thin QR
factorizations and one r × r SVD: B = Q_b R_b, Aᵀ = Q_a R_a, s·R_b R_aᵀ = U_c Σ V_cᵀ, so ΔW = (Q_b U_c) Σ (Q_a V_c)ᵀ,
in O((m + n) r²) instead of the O(m n min(m, n)) of a dense SVD. Components with a numerically zero singular value
(:func:`significant_components`) are dropped, as the dense path drops them (their directions are arbitrary).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checkpoints.peft_adapter import LoRAFactors
from .engine import merge_entry_in_blocks
from .parallel import default_workers, map_in_order
from .registry import MergeMethod
from .task_vectors import TaskVectors, workspace_bytes
from .tsv import LowRankFactors, TaskSingularVectors, significant_components

__all__ = ["AdapterEntry", "dense_factors", "factored_mean", "factored_sum", "factored_svd",
           "factored_task_singular_vectors", "merge_adapter_entries", "product_svd", "truncate_rank", "update_sides"]


def product_svd(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The exact thin SVD ``(U [m, q], s [q], V [n, q])`` of ``left @ rightᵀ`` (left [m, p], right [n, p]),
    q = min(m, n, p), from two thin QRs and a q × q SVD: every component, numerically zero ones included, so that
    callers judge significance against the scale that matters to them (not always this matrix's own σ1)."""
    Q_l, R_l = torch.linalg.qr(left)
    Q_r, R_r = torch.linalg.qr(right)
    U_c, s, V_ch = torch.linalg.svd(R_l @ R_r.mT, full_matrices=False)
    return Q_l @ U_c, s, Q_r @ V_ch.mT


def factored_svd(factors: LoRAFactors, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The exact thin SVD ``(U [m, q], s [q], V [n, q])`` of ΔW = scale·B·A, float32, singular values descending,
    numerically zero components dropped (q ≤ r)."""
    U, s, V = product_svd(factors.B.to(device, torch.float32) * factors.scale, factors.A.to(device, torch.float32).mT)
    keep = significant_components(s, *factors.shape)
    return U[:, keep], s[keep], V[:, keep]


def factored_task_singular_vectors(factors: Sequence[LoRAFactors | None], k: int,
                                   device: torch.device | str | None = None) -> TaskSingularVectors:
    """TSV-M's concatenation (Algorithm 1, lines 1-6) from factors: each task's top-k components (all of them when
    its rank is at most k), in task order; tasks without an update contribute nothing."""
    rows, cols = next(f.shape for f in factors if f is not None)
    Us, ss, Vs = [], [], []
    for found in factors:
        if found is None or found.is_zero():
            continue
        U, s, V = factored_svd(found, device)
        Us.append(U[:, :k])
        ss.append(s[:k])
        Vs.append(V[:, :k])
    if not ss:
        empty = torch.zeros
        return TaskSingularVectors(empty(rows, 0, device=device), empty(0, device=device),
                                   empty(cols, 0, device=device), k)
    return TaskSingularVectors(torch.cat(Us, dim=1), torch.cat(ss), torch.cat(Vs, dim=1), k)


def factored_sum(factors: Sequence[LoRAFactors | None], weight: float = 1.0,
                 device: torch.device | str | None = None) -> LowRankFactors:
    """``weight``·Σ ΔWi as one set of factors: the Bs side by side (each times its scale), the As stacked; rank
    Σ ri. Exact: no decomposition."""
    present = [f for f in factors if f is not None]
    if not present:
        raise ValueError("factored_sum needs at least one task with LoRA factors")
    U = torch.cat([f.B.to(device, torch.float32) * f.scale for f in present], dim=1)
    V = torch.cat([f.A.to(device, torch.float32).mT for f in present], dim=1)
    return LowRankFactors(U, torch.full((U.shape[1],), float(weight), device=U.device), V)


def factored_mean(factors: Sequence[LoRAFactors | None], num_tasks: int,
                  device: torch.device | str | None = None) -> LowRankFactors:
    """The mean of the T task vectors (a task without an update counts as zero) as factors."""
    return factored_sum(factors, 1.0 / num_tasks, device)


def truncate_rank(factors: LowRankFactors, max_rank: int) -> tuple[LowRankFactors, float]:
    """The best rank-``max_rank`` approximation of ``U diag(s) Vᵀ`` (exact SVD through the factors' QRs) and its
    relative Frobenius error ‖X − X_R‖ / ‖X‖ (0 when the rank is already at most ``max_rank``)."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    U, s, V = product_svd(factors.U * factors.s, factors.V)
    keep = significant_components(s, U.shape[0], V.shape[0])
    U, s, V = U[:, keep], s[keep], V[:, keep]
    total = float(torch.linalg.vector_norm(s))
    dropped = float(torch.linalg.vector_norm(s[max_rank:]))
    return LowRankFactors(U[:, :max_rank], s[:max_rank], V[:, :max_rank]), dropped / total if total > 0 else 0.0


def dense_factors(tau: Tensor) -> LowRankFactors:
    """A dense matrix as exact factors (its thin SVD, numerically zero components dropped)."""
    U, s, Vh = torch.linalg.svd(tau.to(torch.float32), full_matrices=False)
    keep = significant_components(s, *tau.shape)
    return LowRankFactors(U[:, keep], s[keep], Vh[keep].mT)


@dataclass
class AdapterEntry:
    """One merged entry of an adapter-to-adapter merge: low-rank ``factors`` (τMT = U diag(s) Vᵀ) or, for an entry
    written whole (saved modules, methods without a low-rank result), the dense ``tau``; ``error`` is the relative
    Frobenius error a rank cap cost."""

    key: str
    factors: LowRankFactors | None = None
    tau: Tensor | None = None
    error: float = 0.0


def merge_adapter_entries(method: MergeMethod, tasks: TaskVectors, keys: Sequence[str], low_rank: set[str], *,
                          max_rank: int | None = None, workers: int | None = None) -> Iterator[AdapterEntry]:
    """The merged entries of ``keys`` that some task changes, in order, ``method.prepare`` done. An entry of
    ``low_rank`` (those the adapters change through factors) comes as factors when the method merges them exactly,
    or, with ``max_rank``, as the truncated SVD of its dense result; every other entry comes dense. ``max_rank``
    caps every factored entry's rank at its best approximation."""

    def one(key: str) -> AdapterEntry | None:
        entry = tasks.entry(key)
        if not entry.changed:
            return None
        if entry.factored and method.merges_factors():
            factors = method.merge_factors(entry)
        elif key in low_rank and max_rank is not None:
            tau = merge_entry_in_blocks(method, entry).task_vector
            if tau is None:
                return None
            factors = dense_factors(tau)
        else:
            tau = merge_entry_in_blocks(method, entry).task_vector
            return None if tau is None else AdapterEntry(key, tau=tau.cpu())
        error = 0.0
        if max_rank is not None:
            factors, error = truncate_rank(factors, max_rank)
        return AdapterEntry(key, factors=factors.to("cpu"), error=error)

    workers = default_workers(tasks.device) if workers is None else workers
    cost = lambda key: workspace_bytes(tasks.shape(key), tasks.num_tasks)  # noqa: E731
    for _, out in map_in_order(one, [key for key in keys if tasks.is_mergeable(key)], workers,
                               label=lambda key: key, cost=cost):
        if out is not None:
            yield out


def update_sides(factors: Sequence[LoRAFactors | None],
                 device: torch.device | str | None = None) -> list[tuple[Tensor, Tensor] | None]:
    """Each task's update as two thin sides ``(scale·B [m, r], Aᵀ [n, r])``, float32 on ``device``, so that
    ΔW = left @ rightᵀ; None for a task without an update (or a zero one): the form the factored per-entry math of
    Iso-C, Iso-CTS, DC-Merge and CART takes, free of LoRA's conventions."""
    return [None if f is None or f.is_zero() else
            (f.B.to(device, torch.float32) * f.scale, f.A.to(device, torch.float32).mT) for f in factors]
