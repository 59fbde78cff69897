"""Magnitude trimming, TIES sign election and TALL / consensus masks: element-wise math (SPEC §3).

These act on tensors of any shape; the flat, whole-model statistics they need (a task's top-k%
threshold, the majority sign) are computed once by the streaming engine and passed in.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

TiesAggregation = Literal["mean", "sum", "max"]
TALL_LAMBDAS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)


def topk_threshold(magnitudes: Tensor, k_percent: float) -> float | None:
    """Magnitude a task's entries must reach to be among its top ``k_percent`` % (None: keep all).

    Follows the published ``topk_values_mask``: with d entries, keep those whose magnitude is ≥ the
    (d − ⌊d·k/100⌋)-th smallest one (ties at the threshold are all kept).
    """
    if not 0 < k_percent <= 100:
        raise ValueError(f"top-k percentage must be in (0, 100], got {k_percent}")
    if k_percent == 100:
        return None
    flat = magnitudes.flatten()
    d = flat.numel()
    kth = d - int(d * k_percent / 100)
    return float(flat.kthvalue(kth).values)


def keep_top(delta: Tensor, threshold: float | None) -> Tensor:
    """Zero the entries of a task vector below its top-k% threshold."""
    return delta if threshold is None else delta * (delta.abs() >= threshold)


def elect_sign(trimmed: Tensor) -> Tensor:
    """TIES sign election: the sign of the summed trimmed task vectors ([T, ...] → [...])."""
    return torch.sign(trimmed.sum(dim=0))


def resolve_zero_signs(signs: Tensor, majority_sign: float) -> Tensor:
    """Entries whose elected sign is 0 take the majority sign of the whole model (published rule)."""
    return torch.where(signs == 0, torch.as_tensor(majority_sign, dtype=signs.dtype, device=signs.device), signs)


def disjoint_merge(trimmed: Tensor, signs: Tensor, aggregation: TiesAggregation = "mean") -> Tensor:
    """Aggregate, per entry, only the task values whose sign agrees with the elected one."""
    agrees = torch.where(signs.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * agrees
    if aggregation == "mean":
        count = selected.ne(0).sum(dim=0).clamp_min(1)
        return selected.sum(dim=0) / count
    if aggregation == "sum":
        return selected.sum(dim=0)
    if aggregation == "max":
        return selected.abs().amax(dim=0) * signs
    raise ValueError(f"unknown TIES aggregation {aggregation!r}; choose mean, sum or max")


def ties_merge(deltas: Tensor, thresholds: list[float | None], majority_sign: float,
               aggregation: TiesAggregation = "mean") -> Tensor:
    """TIES-Merging of one entry: trim, elect signs, disjoint aggregation."""
    trimmed = torch.stack([keep_top(d, t) for d, t in zip(deltas, thresholds, strict=True)])
    signs = resolve_zero_signs(elect_sign(trimmed), majority_sign)
    return disjoint_merge(trimmed, signs, aggregation)


def tall_mask(pretrained: Tensor, finetuned: Tensor, merged_tv: Tensor, lam: float) -> Tensor:
    """TALL mask of one task: keep p where |θ0 − θt| > |θ0 + τMT − θt| · λ."""
    return (pretrained - finetuned).abs() > (pretrained + merged_tv - finetuned).abs() * lam


def tall_mask_levels(pretrained: Tensor, finetuned: Tensor, merged_tv: Tensor,
                     lambdas: tuple[float, ...] = TALL_LAMBDAS) -> Tensor:
    """Masks of every λ at once, as one uint8 per parameter: how many of the (ascending) λ keep it.

    The mask is monotone in λ (a larger λ keeps fewer entries), so the mask of ``lambdas[j]`` is
    exactly ``levels > j``. This stores five masks in one byte per parameter.
    """
    if list(lambdas) != sorted(lambdas):
        raise ValueError("lambdas must be ascending")
    levels = torch.zeros(pretrained.shape, dtype=torch.uint8, device=pretrained.device)
    for lam in lambdas:
        levels += tall_mask(pretrained, finetuned, merged_tv, lam)
    return levels


def consensus_mask(task_masks: Tensor, min_tasks: int = 2) -> Tensor:
    """Keep the parameters that at least ``min_tasks`` task masks keep ([T, ...] bool → [...] bool)."""
    return task_masks.sum(dim=0) >= min_tasks
