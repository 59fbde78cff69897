"""Truncated SVDs of a stack of task matrices, and the two ways TSV-M decorrelates them.

Every solver takes a batch ``A`` of shape ``[T, m, n]`` with ``m >= n`` (callers transpose wide
matrices: LAPACK is several times slower on wide inputs) and returns the top-``k`` singular
triplets ``(U [T, m, k], s [T, k], Vh [T, k, n])`` in descending order.

* ``full``       -- one batched thin SVD (LAPACK / cuSOLVER): the textbook definition.
* ``exact``      -- the default. Same result as ``full`` to float32 round-off, but computes only what
                    TSV needs: the top eigenvectors of the Gram matrix give a subspace slightly larger
                    than k (k + max(16, k/4)), a Rayleigh--Ritz step on the original matrix restores full precision,
                    and every result is checked against its residual; matrices that fail the check
                    (very fast spectral decay, near-degenerate gaps) fall back to ``full``.
* ``randomized`` -- randomized subspace iteration (Halko et al. 2011) with oversampling and power
                    iterations. Approximate (see ``RANDOMIZED_TOLERANCE``); cheaper than ``exact`` when
                    k is small next to min(m, n), i.e. with many tasks or large layers.

When 2k ≥ n every mode computes the full SVD, which is then the cheapest exact route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SVDMode = Literal["exact", "full", "randomized"]
SVD_MODES: tuple[str, ...] = ("exact", "full", "randomized")

#: Documented accuracy of the randomized path: relative Frobenius error of a TSV-M merged matrix
#: against the exact path is below this for task matrices whose spectrum decays at least like
#: σ_j ∝ j^-0.7 (a slow decay; real task vectors are closer to low rank, where the error is far
#: smaller). Checked in tests/merging/test_svd.py.
RANDOMIZED_TOLERANCE = 0.05

# Residual bound of the certified ``exact`` solver, relative to the largest singular value.
_EXACT_RESIDUAL_TOL = 2e-5


@dataclass(frozen=True)
class TruncatedSVD:
    """Top-k singular triplets of a batch of matrices."""

    U: Tensor  # [T, m, k]
    s: Tensor  # [T, k]
    Vh: Tensor  # [T, k, n]


def truncated_svd(A: Tensor, k: int, mode: SVDMode = "exact", *, oversample: int | None = None,
                  power_iters: int = 3, generator: torch.Generator | None = None) -> TruncatedSVD:
    """Top-``k`` singular triplets of every matrix of the batch ``A`` ([T, m, n], m >= n)."""
    if A.ndim != 3:
        raise ValueError(f"expected a batch of matrices [T, m, n], got shape {tuple(A.shape)}")
    if A.shape[-2] < A.shape[-1]:
        raise ValueError("truncated_svd expects tall matrices (m >= n); transpose wide inputs first")
    n = A.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is outside [0, {n}]")
    if mode == "full" or 2 * k >= n:
        return _full_svd(A, k)
    if mode == "exact":
        return _certified_svd(A, k)
    if mode == "randomized":
        return _randomized_svd(A, k, oversample=oversample, power_iters=power_iters, generator=generator)
    raise ValueError(f"unknown SVD mode {mode!r}; choose one of {', '.join(SVD_MODES)}")


def _full_svd(A: Tensor, k: int) -> TruncatedSVD:
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return TruncatedSVD(U[..., :k], s[..., :k], Vh[..., :k, :])


def _rayleigh_ritz(A: Tensor, basis: Tensor, k: int) -> tuple[TruncatedSVD, Tensor]:
    """Best rank-k triplets of ``A`` whose right vectors lie in span(basis), plus their residuals.

    With ``basis`` spanning the right singular vectors, ``Q = orth(A @ basis)`` spans the left ones
    and the SVD of the small matrix ``Q^T A`` gives the triplets at full working precision.
    """
    Q, _ = torch.linalg.qr(A @ basis)
    B = Q.mT @ A  # [T, q, n]
    Ub, s, Vh = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Ub[..., :k]
    s, Vh = s[..., :k], Vh[..., :k, :]
    # Residual of A v_j = s_j u_j, i.e. how much of A's action on v_j the subspace Q misses.
    residual = torch.linalg.vector_norm(A @ Vh.mT - U * s.unsqueeze(-2), dim=-2)
    return TruncatedSVD(U, s, Vh), residual


def _certified_svd(A: Tensor, k: int) -> TruncatedSVD:
    if k == 0:
        return _full_svd(A, 0)
    n = A.shape[-1]
    q = min(n, k + max(16, k // 4))
    # Gram eigenvectors: cheap (one GEMM, one n x n eigh) and accurate for the dominant directions.
    _, eigvecs = torch.linalg.eigh(A.mT @ A)
    basis = eigvecs[..., -q:].flip(-1)
    result, residual = _rayleigh_ritz(A, basis, k)
    scale = result.s[..., :1].clamp_min(torch.finfo(A.dtype).tiny)
    ok = (residual <= _EXACT_RESIDUAL_TOL * scale).all(dim=-1)
    if bool(ok.all()):
        return result
    # Fall back, only for the matrices that failed, to the full decomposition.
    bad = (~ok).nonzero().flatten()
    exact = _full_svd(A[bad], k)
    U, s, Vh = result.U.clone(), result.s.clone(), result.Vh.clone()
    U[bad], s[bad], Vh[bad] = exact.U, exact.s, exact.Vh
    return TruncatedSVD(U, s, Vh)


def _randomized_svd(A: Tensor, k: int, *, oversample: int | None, power_iters: int,
                    generator: torch.Generator | None) -> TruncatedSVD:
    if k == 0:
        return _full_svd(A, 0)
    n = A.shape[-1]
    q = min(n, k + (oversample if oversample is not None else max(10, k)))
    # A fixed seed by default: a merge is a deterministic function of its checkpoints.
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    basis = torch.randn(A.shape[0], n, q, dtype=A.dtype, device="cpu", generator=generator).to(A.device)
    for _ in range(power_iters):
        # Subspace iteration on AᵀA, re-orthonormalized in the small n x q space (cheap QR).
        basis, _ = torch.linalg.qr(A.mT @ (A @ basis))
    result, _ = _rayleigh_ritz(A, basis, k)
    return result


def polar_factor(A: Tensor) -> Tensor:
    """Orthogonal Procrustes: the matrix with orthonormal columns nearest to ``A`` (Frobenius).

    For ``A = P D Q^T`` it is ``P Q^T``; works on a single matrix or a batch.
    """
    if A.shape[-2] < A.shape[-1]:
        return polar_factor(A.mT).mT
    if A.shape[-2] > 2 * A.shape[-1]:
        # A = QR first: LAPACK's SVD of the small square R is much cheaper than of A itself.
        Q, R = torch.linalg.qr(A)
        return Q @ polar_factor(R)
    P, _, Qh = torch.linalg.svd(A, full_matrices=False)
    return P @ Qh


def whitening(A: Tensor, eps: float = 1e-12) -> Tensor:
    """``A (A^T A)^{-1/2}`` through an eigendecomposition of the Gram matrix (TSVM_2, Prop. 4.1).

    Equal to :func:`polar_factor` for full-column-rank ``A``; squares the condition number, so
    in float32 it is less precise. ``eps`` guards the inverse square root exactly as published.
    """
    eigvals, Q = torch.linalg.eigh(A.mT @ A)
    inv_sqrt = 1.0 / (torch.sqrt(torch.abs(eigvals)) + eps)
    return A @ (Q * inv_sqrt.unsqueeze(-2)) @ Q.mT
