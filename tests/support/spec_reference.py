"""Naive float64 implementations of SPEC §3, written for clarity, used as golden references."""

from __future__ import annotations

import torch
from torch import Tensor


def procrustes(A: Tensor) -> Tensor:
    P, _, Qh = torch.linalg.svd(A, full_matrices=False)
    return P @ Qh


def concatenated(deltas: list[Tensor], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Û, ŝ, V̂ by full SVDs and explicit concatenation, skipping all-zero task matrices."""
    Us, ss, Vs = [], [], []
    for delta in deltas:
        if not delta.any():
            continue
        U, s, Vh = torch.linalg.svd(delta.double(), full_matrices=True)
        Us.append(U[:, :k])
        ss.append(s[:k])
        Vs.append(Vh[:k].T)
    return torch.cat(Us, 1), torch.cat(ss), torch.cat(Vs, 1)


def tsvm(deltas: list[Tensor]) -> Tensor:
    rows, cols = deltas[0].shape
    k = min(rows, cols) // len(deltas)
    U, s, V = concatenated(deltas, k)
    return procrustes(U) @ torch.diag(s) @ procrustes(V).T


def tsvm_whitening(deltas: list[Tensor]) -> Tensor:
    rows, cols = deltas[0].shape
    k = min(rows, cols) // len(deltas)
    U, s, V = concatenated(deltas, k)
    s, order = torch.sort(s, stable=True)
    U, V = U[:, order], V[:, order]

    def whiten(X: Tensor) -> Tensor:
        lam, Q = torch.linalg.eigh(X.T @ X)
        return X @ Q @ torch.diag(1.0 / (torch.sqrt(lam.abs()) + 1e-12)) @ Q.T

    return whiten(U) @ torch.diag(s) @ whiten(V).T


def rank_k(delta: Tensor, k: int) -> Tensor:
    U, s, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return U[:, :k] @ torch.diag(s[:k]) @ Vh[:k]


def sti(U: Tensor, s: Tensor, V: Tensor) -> float:
    eye = torch.eye(s.numel(), dtype=U.dtype)
    return float(((U.T @ U - eye) @ torch.diag(s) @ (V.T @ V - eye)).abs().sum())


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def task_matrices(num_tasks: int, rows: int, cols: int, *, decay: float = 0.7, seed: int = 0) -> list[Tensor]:
    """Task matrices with a power-law spectrum, like real task vectors (float32)."""
    g = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    out = []
    for _ in range(num_tasks):
        U, _ = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(cols, r, generator=g, dtype=torch.float64))
        s = torch.arange(1, r + 1, dtype=torch.float64) ** -decay
        out.append(((U * s) @ V.T).float())
    return out
