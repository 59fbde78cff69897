"""CART, "Revisiting Weight Averaging for Model Merging" (Choi et al.): the per-entry math of SPEC_BEYOND §B5.

The weight average is the centre; each task's deviation from it, τi − mean τ, is low rank on the attention and
MLP matrices, and adding back the sum of their rank-k truncations (scaled by the prior λ) restores what averaging
loses. Pure functions on one entry's stack ``deltas [T, rows, cols]``; no I/O, no global state, any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .svd import sum_of_truncations


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
