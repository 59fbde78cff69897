"""CART, "Revisiting Weight Averaging for Model Merging" (Choi et al.): the per-entry math of SPEC_BEYOND §B5.

The weight average is the centre; each task's deviation from it, τi − mean τ, is low rank on the attention and
MLP matrices, and adding back the sum of their rank-k truncations (scaled by the prior λ) restores what averaging
loses. :func:`cart_entry` acts on one entry's stack ``deltas [T, rows, cols]``; :func:`cart_factors` computes the
same from low-rank task matrices given as thin sides (τi = left @ rightᵀ, LoRA updates) without forming any
rows × cols matrix. Pure functions; no I/O, no global state, any device.

Rank-deficient inputs need no extra rule here: a rank-k truncation of Di = τi − mean τ is unique whenever σ_k(Di) >
σ_{k+1}(Di), and when Di has rank at most k (LoRA updates) it is Di itself — its null directions have zero
singular values and contribute nothing, whatever vectors an SVD returns for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .svd import sum_of_truncations
from .tsv import LowRankFactors


@dataclass(frozen=True)
class CartSetting:
    """λ (``prior``) and the rank ratio ρ of a published CART configuration."""

    prior: float
    rank_ratio: float


#: The authors' configurations, all for ViT-B-32 (``configs/CART/ViT-b-32_<T>_CART.yaml``), by number of tasks.
PUBLISHED_SETTINGS: dict[int, CartSetting] = {
    8: CartSetting(prior=2.0, rank_ratio=0.12),
    14: CartSetting(prior=1.5, rank_ratio=0.16),
    20: CartSetting(prior=1.9, rank_ratio=0.32),
}


def is_low_rank_key(key: str, shape: torch.Size | tuple[int, ...]) -> bool:
    """The entries CART truncates, chosen by name as published: ``attn`` or ``mlp`` in the key, neither ``ln``
    nor ``bias`` (in open_clip ViTs, each resblock's four weight matrices; not ``visual.proj``, the positional
    embeddings or ``conv1``). Only matrices qualify: a 2-D SVD is what the rule is for."""
    return len(shape) == 2 and ("attn" in key or "mlp" in key) and "ln" not in key and "bias" not in key


def kept_components(rows: int, cols: int, rank_ratio: float) -> int:
    """k = max(1, ⌊ρ·r⌋), r = min(rows, cols); ρ = 1 keeps every component (92 of 768 for ρ = 0.12)."""
    rank = min(rows, cols)
    return min(rank, max(1, int(rank_ratio * rank)))


def cart_entry(deltas: Tensor, prior: float, rank_ratio: float, *, low_rank: bool) -> Tensor:
    """τMT of one entry at α = 1: mean τ + λ·Σi SVD_k(τi − mean τ) on low-rank entries, mean τ on all others.

    (On the others the authors add λ·Σi (τi − mean τ), which is zero up to round-off; the exact mean is returned.)
    ``rank_ratio`` = 0 adds nothing (the weight average).
    """
    mean = deltas.mean(dim=0)
    if not low_rank or rank_ratio <= 0.0:
        return mean
    rows, cols = deltas.shape[-2:]
    k = kept_components(rows, cols, rank_ratio)
    if k == min(rows, cols):
        return mean + prior * (deltas - mean).sum(dim=0)
    return mean + prior * sum_of_truncations(deltas, k, centre=mean)


def cart_factors(sides: Sequence[tuple[Tensor, Tensor] | None], rows: int, cols: int, prior: float,
                 rank_ratio: float, *, low_rank: bool) -> LowRankFactors:
    """:func:`cart_entry` of low-rank task matrices, one per merged task (τi = left @ rightᵀ; None for a task that
    did not change the entry, which still counts in the mean), as factors of rank at most Σ ri.

    With L = [left_1 … left_T] = Q_l R_l and R = [right_1 …] = Q_r R_r (thin QRs), every τi and the mean are
    Q_l (R_l diag(w) R_rᵀ) Q_rᵀ for a weight vector w over the concatenated columns (1 on task i's own columns for
    τi, 1/T everywhere for the mean), so Di = τi − mean τ is Q_l Ci Q_rᵀ and its rank-k truncation is that of the
    small core Ci: the whole merge is one core, decomposed once at the end.
    """
    num_tasks = len(sides)
    present = [(task, found) for task, found in enumerate(sides) if found is not None]
    if not present:
        return LowRankFactors(torch.zeros(rows, 0), torch.zeros(0), torch.zeros(cols, 0))
    left = torch.cat([found[0] for _, found in present], dim=1)
    right = torch.cat([found[1] for _, found in present], dim=1)
    k = kept_components(rows, cols, rank_ratio)
    if not low_rank or rank_ratio <= 0.0 or k == min(rows, cols):  # with k = r, Σi Di = 0: the mean, exactly
        return LowRankFactors(left, left.new_full((left.shape[1],), 1.0 / num_tasks), right)
    Q_l, R_l = torch.linalg.qr(left)
    Q_r, R_r = torch.linalg.qr(right)
    owner = torch.cat([torch.full((found[0].shape[1],), task, device=left.device) for task, found in present])
    core = (R_l / num_tasks) @ R_r.mT
    for task in range(num_tasks):
        weights = (owner == task).to(left.dtype) - 1.0 / num_tasks  # Di's weight on each concatenated column
        P, S, Qh = torch.linalg.svd((R_l * weights) @ R_r.mT, full_matrices=False)
        core += prior * ((P[:, :k] * S[:k]) @ Qh[:k])
    P, S, Qh = torch.linalg.svd(core, full_matrices=False)
    return LowRankFactors(Q_l @ P, S, Q_r @ Qh.mT)
