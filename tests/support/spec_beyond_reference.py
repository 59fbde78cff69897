"""Naive float64 implementations of SPEC_BEYOND §B2-§B5, step by step as written there, used as golden references.

Deliberately literal: full SVDs, the zero-padded cover bases of DC-Merge, the r × r projected matrices and their
trimming over all r² coordinates, Python's own rounding. Nothing here is shared with the library's fast paths.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.linalg.svd(A.double(), full_matrices=False)


def polar(A: Tensor) -> Tensor:
    P, _, Qh = _svd(A)
    return P @ Qh


def is_matrix(key: str, shape: tuple[int, ...]) -> bool:
    """The shared 2-D entry rule: ndim 2 and not text_projection."""
    return len(shape) == 2 and "text_projection" not in key


def mean(deltas: list[Tensor]) -> Tensor:
    return torch.stack([d.double() for d in deltas]).mean(0)


# --------------------------------------------------------------------------------------------------- §B2 Iso-C

def iso_c(deltas: list[Tensor]) -> Tensor:
    total = torch.stack([d.double() for d in deltas]).sum(0)
    U, s, Vh = _svd(total)
    return s.mean() * U @ Vh


# --------------------------------------------------------------------------------------------------- §B3 Iso-CTS

def iso_cts_sizes(rows: int, cols: int, num_tasks: int, fraction: float) -> tuple[int, int]:
    """(c, k) by the authors' rule: c0 = int(f·r), ts = round((r − c0)/T)·T (half to even), c = r − ts."""
    r = min(rows, cols)
    c0 = int(fraction * r)
    ts = round((r - c0) / num_tasks) * num_tasks
    return r - ts, ts // num_tasks


def iso_cts(deltas: list[Tensor], fraction: float = 0.8) -> Tensor:
    rows, cols = deltas[0].shape
    c, k = iso_cts_sizes(rows, cols, len(deltas), fraction)
    total = torch.stack([d.double() for d in deltas]).sum(0)
    U, s, Vh = _svd(total)
    Uc, sc, Vc = U[:, :c], s[:c], Vh[:c].T
    Us, ss, Vs = [], [], []
    for delta in deltas:
        residual = delta.double() - Uc @ Uc.T @ delta.double()
        Ur, sr, Vrh = _svd(residual)
        Us.append(Ur[:, :k])
        ss.append(sr[:k])
        Vs.append(Vrh[:k].T)
    U_hat = torch.cat([*Us, Uc], 1)
    s_hat = torch.cat([*ss, sc])
    V_hat = torch.cat([*Vs, Vc], 1)
    return s_hat.mean() * polar(U_hat) @ polar(V_hat).T


# --------------------------------------------------------------------------------------------------- §B4 DC-Merge

def dc_merge_parts(deltas: list[Tensor], density: float = 0.001) -> dict[str, Tensor | int]:
    """Every intermediate of §B4: cover bases, projected and trimmed matrices, the merge and the block mask."""
    rows, cols = deltas[0].shape
    r = min(rows, cols)
    T = len(deltas)
    k = int(r * (1 / T))
    U_stack = torch.zeros(rows, r, dtype=torch.float64)
    V_stack = torch.zeros(r, cols, dtype=torch.float64)
    truncations = []
    for i, delta in enumerate(deltas):
        U, s, Vh = _svd(delta)
        truncations.append(U[:, :k] @ torch.diag(s[:k]) @ Vh[:k])
        U_stack[:, i * k:(i + 1) * k] = U[:, :k]
        V_stack[i * k:(i + 1) * k, :] = Vh[:k]
    cover_u, cover_v = polar(U_stack), polar(V_stack)  # [rows, r], [r, cols]
    keep = max(1, int(density * r * r))
    trimmed = []
    for truncation in truncations:
        M = cover_u.T @ truncation @ cover_v.T
        threshold = torch.sort(M.abs().flatten(), descending=True).values[keep - 1]
        trimmed.append(M * (M.abs() >= threshold))
    stacked = torch.stack(trimmed)
    total = stacked.sum(0)
    elected = torch.sign(total)
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)
    merged[total == 0] = 0
    index = torch.arange(r)
    block = index // k if k else torch.full((r,), T)
    mask = (block.unsqueeze(1) == block.unsqueeze(0)) & (block.unsqueeze(1) < T)
    return {"cover_u": cover_u, "cover_v": cover_v, "merged": merged, "mask": mask, "k": k}


def dc_merge(deltas: list[Tensor], density: float = 0.001) -> Tensor:
    parts = dc_merge_parts(deltas, density)
    if parts["k"] == 0:
        return torch.zeros(deltas[0].shape, dtype=torch.float64)
    return parts["cover_u"] @ (parts["merged"] * parts["mask"]) @ parts["cover_v"]


# --------------------------------------------------------------------------------------------------- §B5 CART

def cart_low_rank_key(key: str) -> bool:
    return ("attn" in key or "mlp" in key) and "ln" not in key and "bias" not in key


def cart(deltas: list[Tensor], key: str, prior: float, rank_ratio: float) -> Tensor:
    average = mean(deltas)
    if not (deltas[0].ndim == 2 and cart_low_rank_key(key)):
        return average
    r = min(deltas[0].shape)
    k = max(1, int(rank_ratio * r))
    low_rank_sum = torch.zeros_like(average)
    for delta in deltas:
        centred = delta.double() - average
        if rank_ratio == 0.0:
            continue
        U, s, Vh = _svd(centred)
        low_rank_sum += U[:, :k] @ torch.diag(s[:k]) @ Vh[:k]
    return average + prior * low_rank_sum
