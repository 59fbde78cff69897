"""Truncated SVDs of a stack of task matrices, and the two ways TSV-M decorrelates them.

Every solver takes a batch ``A`` of shape ``[T, m, n]`` with ``m >= n`` (callers transpose wide
matrices: LAPACK is several times slower on wide inputs) and returns the top-``k`` singular
triplets ``(U [T, m, k], s [T, k], Vh [T, k, n])`` in descending order.

* ``full``       -- one batched thin SVD (LAPACK / cuSOLVER): the textbook definition.
* ``exact``      -- the default. The top-k eigenvectors of the float64 Gram matrix AᵀA (formed from float32 row
                    blocks, one task at a time) give the right singular vectors and values, A·V/s the left ones,
                    all to float64 precision wherever σ_j is above the float32 noise level. A merge that cuts the
                    spectrum inside a noise floor (TSV-M's k = ⌊r/T⌋ on fine-tuning deltas) depends on which of
                    many nearly equal singular directions fall inside the cut: float32 LAPACK resolves them to
                    about eps·σ1 (its choice moves with the thread count), a float32 Gram only to eps·σ1² (on
                    bench/merge.py's synthetic ViT-B-32 checkpoints, 8 tasks: TSV-M 1.5e-3 from the float64
                    definition through a float32 Gram, 6e-5 through float32 LAPACK, 3e-6 through the float64
                    Gram), for about the time of a float32 LAPACK SVD of the same matrix (less on tall ones).
                    Matrices with numerically zero singular values among their top k (rank-deficient tasks) take
                    the ``full`` route, whose null vectors are orthonormal.
* ``randomized`` -- randomized range finder (Halko et al. 2011: k + 10 columns, one subspace
                    iteration; bfloat16 products on CPUs that multiply bfloat16 natively) and a float32
                    Rayleigh--Ritz step. Each task's rank-k truncation is near-optimal (see
                    ``RANDOMIZED_TOLERANCE``); TSV-M then also takes its Procrustes factors through the
                    Gram matrix (:func:`gram_polar_factor`). About 2.8x faster than ``exact`` for 8
                    ViT-B-32 tasks on a 2-core CPU (bench/merge.py: 26.1 s against 73.8 s). The merged
                    matrix is *not* close to the exact one entrywise: TSV-M's concatenated singular vectors
                    are square and ill-conditioned (T·k = min(m, n)), so Procrustes turns a slightly
                    different choice among nearly equivalent singular directions into a different rotation.
                    Use it to explore; report numbers from ``exact``.

When 2k ≥ n the ``randomized`` mode computes the full SVD, which is then the cheapest route.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

SVDMode = Literal["exact", "full", "randomized"]
SVD_MODES: tuple[str, ...] = ("exact", "full", "randomized")

#: Documented accuracy of the randomized path, per task matrix A and its randomized rank-k truncation
#: Ã_k: ‖A − Ã_k‖_F ≤ ‖A − A_k‖_F + RANDOMIZED_TOLERANCE · ‖A‖_F, A_k the optimal truncation. Measured
#: excess: ≤ 3 % of ‖A‖_F on nearly flat spectra (σ_j ∝ j^-0.3), ≤ 1 % from σ_j ∝ j^-0.7 on, ~0.1 %
#: (the bfloat16 floor) on fast decay. Checked in tests/merging/test_svd.py.
RANDOMIZED_TOLERANCE = 0.05

# Oversampling and subspace iterations of the randomized solver (Halko et al.'s p = 10, one iteration).
_RANDOMIZED_OVERSAMPLE = 10
_RANDOMIZED_POWER_ITERS = 1

# Float64 workspace of the ``exact`` solver: rows of a task matrix are converted this many bytes at a time.
_GRAM_BLOCK_BYTES = 32 * 2**20

# Smallest eigenvalue ratio of A^T A (i.e. 1 / cond(A)^2) for which the polar factor is taken from the
# Gram matrix: float32 loses about eps * cond(A)^2, which is then at the level of the SVD route (~2e-6).
_GRAM_POLAR_MIN_EIG_RATIO = 1e-2
# Below this fraction of the largest eigenvalue, a float32 Gram eigenvalue is round-off.
_GRAM_POLAR_EIG_FLOOR = 1e-6


@dataclass(frozen=True)
class TruncatedSVD:
    """Top-k singular triplets of a batch of matrices."""

    U: Tensor  # [T, m, k]
    s: Tensor  # [T, k]
    Vh: Tensor  # [T, k, n]


def truncated_svd(A: Tensor, k: int, mode: SVDMode = "exact", *, oversample: int | None = None,
                  power_iters: int | None = None, generator: torch.Generator | None = None) -> TruncatedSVD:
    """Top-``k`` singular triplets of every matrix of the batch ``A`` ([T, m, n], m >= n)."""
    if A.ndim != 3:
        raise ValueError(f"expected a batch of matrices [T, m, n], got shape {tuple(A.shape)}")
    if A.shape[-2] < A.shape[-1]:
        raise ValueError("truncated_svd expects tall matrices (m >= n); transpose wide inputs first")
    n = A.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is outside [0, {n}]")
    if mode == "full":
        return _full_svd(A, k)
    if mode == "exact":
        return _gram_svd(A, k)
    if 2 * k >= n and mode == "randomized":
        return _full_svd(A, k)
    if mode == "randomized":
        return _randomized_svd(A, k, oversample=oversample, power_iters=power_iters, generator=generator)
    raise ValueError(f"unknown SVD mode {mode!r}; choose one of {', '.join(SVD_MODES)}")


def linalg_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.linalg.svd(A, full_matrices=False)``, robust to LAPACK's convergence failures.

    float32 ``gesdd`` occasionally fails to converge on moderately ill-conditioned inputs (seen on Iso-CTS' 768 × 768
    concatenated singular vectors, condition number ~10⁴, with one BLAS thread), where the float64 routine succeeds:
    the failing call is repeated in float64 and the result cast back. Only a matrix on which float64 fails too
    raises.
    """
    try:
        return torch.linalg.svd(A, full_matrices=False)
    except torch.linalg.LinAlgError:
        if A.dtype == torch.float64:
            raise
    U, s, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    return U.to(A.dtype), s.to(A.dtype), Vh.to(A.dtype)


def symmetric_eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a symmetric matrix (batch), repeated in float64 when the float32 routine fails to
    converge, as it can on Gram matrices with many repeated (zero) eigenvalues: those of concatenations whose
    null components were zeroed."""
    try:
        return torch.linalg.eigh(G)
    except torch.linalg.LinAlgError:
        if G.dtype == torch.float64:
            raise
    eigvals, eigvecs = torch.linalg.eigh(G.to(torch.float64))
    return eigvals.to(G.dtype), eigvecs.to(G.dtype)


def significant_components(s: Tensor, rows: int, cols: int) -> Tensor:
    """Which singular values (descending, along the last dimension) are not numerically zero: above
    max(rows, cols)·eps·σ₁, the rule of ``numpy.linalg.matrix_rank``.

    A task matrix of rank r < k (a LoRA update, a matrix a task barely changed) has k − r singular directions that
    are arbitrary (whatever LAPACK returns for a null space); kept in the concatenation, they would change every
    Procrustes factor. They are dropped, so TSV-M of a low-rank task matrix is defined by its r components alone.
    """
    eps = torch.finfo(s.dtype).eps if s.is_floating_point() else torch.finfo(torch.float32).eps
    return s > s[..., :1] * (max(rows, cols) * eps)


def _full_svd(A: Tensor, k: int) -> TruncatedSVD:
    U, s, Vh = linalg_svd(A)
    return TruncatedSVD(U[..., :k], s[..., :k], Vh[..., :k, :])


def _svd_within_range(A: Tensor, Q: Tensor, k: int) -> TruncatedSVD:
    """Top-k triplets of ``Q Q^T A`` for ``Q`` with orthonormal columns: the SVD of the small ``Q^T A``,
    taken through its transpose (LAPACK prefers tall), at full working precision."""
    Vb, s, Ubh = linalg_svd((Q.mT @ A).mT)
    return TruncatedSVD(Q @ Ubh.mT[..., :k], s[..., :k], Vb.mT[..., :k, :])


def _gram_svd(A: Tensor, k: int) -> TruncatedSVD:
    """Top-k triplets of every matrix of the batch from the eigendecomposition of its float64 Gram matrix."""
    if k == 0:
        return _full_svd(A, 0)
    parts = [_gram_svd_one(matrix, k) for matrix in A]
    return TruncatedSVD(torch.stack([p.U for p in parts]), torch.stack([p.s for p in parts]),
                        torch.stack([p.Vh for p in parts]))


def _float64_block_rows(n: int) -> int:
    """Rows of an [m, n] matrix converted to float64 at a time (``_GRAM_BLOCK_BYTES`` of workspace)."""
    return max(1, _GRAM_BLOCK_BYTES // (8 * n))


def float64_gram(A: Tensor) -> Tensor:
    """AᵀA ([n, n], float64) of one matrix [m, n], formed block of rows by block of rows: no float64 copy of A.

    A float32 Gram matrix resolves eigenvalues only to about eps·σ1², i.e. singular values near the noise floor of
    fine-tuning deltas to sqrt(eps)·σ1; a cut there (TSV-M's k = ⌊r/T⌋, CART's ⌊ρ·r⌋) then picks among nearly equal
    directions by round-off. In float64 they are resolved to float32's own noise level.
    """
    m, n = A.shape
    rows = _float64_block_rows(n)
    gram = torch.zeros(n, n, dtype=torch.float64, device=A.device)
    for start in range(0, m, rows):
        block = A[start:start + rows].to(torch.float64)
        gram.addmm_(block.mT, block)
    return gram


def _gram_svd_one(A: Tensor, k: int) -> TruncatedSVD:
    """One tall matrix [m, n]: V, s² = top eigenpairs of AᵀA in float64, U = A·V/s, cast back to A's dtype.

    No float64 copy of the whole matrix is made: the Gram matrix and A·V are formed block of rows by block of rows.
    A singular value at or under the float32 noise level (max(m, n)·eps·σ1, the rule of ``numpy.linalg.matrix_rank``)
    has no defined A·V/s: such matrices take the full LAPACK SVD, whose null vectors are orthonormal.
    """
    m, n = A.shape
    rows = _float64_block_rows(n)
    eigvals, eigvecs = symmetric_eigh(float64_gram(A))
    V = eigvecs[:, -k:].flip(-1)
    s = eigvals[-k:].flip(-1).clamp_min(0).sqrt()
    if not bool(significant_components(s.to(A.dtype), m, n).all()):
        full = _full_svd(A.unsqueeze(0), k)
        return TruncatedSVD(full.U[0], full.s[0], full.Vh[0])
    U = torch.empty(m, k, dtype=A.dtype, device=A.device)
    for start in range(0, m, rows):
        U[start:start + rows] = (A[start:start + rows].to(torch.float64) @ V / s).to(A.dtype)
    return TruncatedSVD(U, s.to(A.dtype), V.mT.to(A.dtype))


def _randomized_svd(A: Tensor, k: int, *, oversample: int | None, power_iters: int | None,
                    generator: torch.Generator | None) -> TruncatedSVD:
    if k == 0:
        return _full_svd(A, 0)
    n = A.shape[-1]
    q = min(n, k + (oversample if oversample is not None else _RANDOMIZED_OVERSAMPLE))
    power_iters = _RANDOMIZED_POWER_ITERS if power_iters is None else power_iters
    # A fixed seed by default: a merge is a deterministic function of its checkpoints.
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    omega = torch.randn(A.shape[0], n, q, dtype=A.dtype, device="cpu", generator=generator).to(A.device)
    # The range finder only has to find a subspace, which bfloat16 does as well as float32 where the
    # hardware multiplies bfloat16 natively (~4x the float32 rate); the projection B below is float32.
    low = sketch_dtype(A.device, A.dtype)
    A_low = A.to(low)

    def orthonormal_range(X: Tensor) -> Tensor:
        return torch.linalg.qr(X.to(A.dtype))[0]

    # The first sketch only needs a well-conditioned basis of its span: Cholesky QR (a third of
    # Householder's cost on these tall, thin blocks) unless the sketch is too ill-conditioned for it.
    Q = _cholesky_orthonormal_basis(A_low @ omega.to(low), A.dtype)
    for _ in range(power_iters):
        # One subspace iteration, re-orthonormalized after each product so that the small singular
        # directions survive the low-precision products.
        W = orthonormal_range(A_low.mT @ Q.to(low))
        Q = orthonormal_range(A_low @ W.to(low))
    if power_iters == 0:
        Q = orthonormal_range(Q)  # Rayleigh--Ritz needs orthonormal columns to working precision
    return _svd_within_range(A, Q, k)  # Rayleigh--Ritz


def _cholesky_orthonormal_basis(Y: Tensor, dtype: torch.dtype) -> Tensor:
    """A basis of span(Y) with orthonormal columns up to ~eps·cond(Y)², by one Cholesky QR pass.

    Falls back to Householder QR when the Cholesky factor certifies cond(Y) > 10^3 (or fails).
    """
    Y = Y.to(dtype)
    R, info = torch.linalg.cholesky_ex(Y.mT @ Y, upper=True)
    diag = R.diagonal(dim1=-2, dim2=-1)
    if bool((info == 0).all()) and bool((diag.amin(-1) > 1e-3 * diag.amax(-1)).all()):
        return torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    return torch.linalg.qr(Y)[0]


@functools.cache
def _cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matrix products at several times the float32 rate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def sketch_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Precision of the randomized range finder's products: bfloat16 where that is fast, else ``dtype``."""
    if dtype == torch.float32 and device.type == "cpu" and _cpu_has_native_bfloat16():
        return torch.bfloat16
    return dtype


def polar_factor(A: Tensor) -> Tensor:
    """Orthogonal Procrustes: the matrix with orthonormal columns nearest to ``A`` (Frobenius).

    For ``A = P D Q^T`` it is ``P Q^T``; works on a single matrix or a batch. Tall inputs (at least
    twice as many rows as columns, e.g. an MLP's 3072-row side) are usually well conditioned, and for
    them ``A (A^T A)^{-1/2}`` is as accurate as the SVD at less than half the cost; the Gram route is
    taken only when the eigenvalues certify it (condition number of ``A`` at most
    ``1 / sqrt(_GRAM_POLAR_MIN_EIG_RATIO)``), otherwise ``A = QR`` and the SVD of the small ``R``.
    """
    if A.shape[-2] < A.shape[-1]:
        return polar_factor(A.mT).mT
    if A.shape[-2] >= 2 * A.shape[-1]:
        eigvals, W = symmetric_eigh(A.mT @ A)
        if bool((eigvals[..., 0] >= _GRAM_POLAR_MIN_EIG_RATIO * eigvals[..., -1]).all()):
            return _times_inverse_sqrt(A, eigvals, W)
        # LAPACK's SVD of the small square R is much cheaper than of A itself.
        Q, R = torch.linalg.qr(A)
        return Q @ polar_factor(R)
    P, _, Qh = linalg_svd(A)
    return P @ Qh


def gram_polar_factor(A: Tensor, block_size: int | None = None) -> Tensor:
    """The polar factor through the Gram matrix, for every input: the ``randomized`` mode's Procrustes.

    About twice as fast as :func:`polar_factor` on square inputs, but float32 loses ~eps * cond(A)^2:
    on the square, ill-conditioned concatenations of TSV-M (cond ~ 10^3) that is a few percent of
    the merged matrix, below the randomized SVD's own deviation. Eigenvalues under
    ``_GRAM_POLAR_EIG_FLOOR`` times the largest are float32 noise and are raised to that floor
    instead of being inverted. ``block_size`` declares that ``A`` (a single tall matrix) is a row of
    blocks with orthonormal columns, like TSV-M's Û: their Gram blocks are the identity and only
    the off-diagonal ones are computed.
    """
    if A.shape[-2] < A.shape[-1]:
        return gram_polar_factor(A.mT).mT
    gram = A.mT @ A if block_size is None else _gram_of_orthonormal_blocks(A, block_size)
    eigvals, W = torch.linalg.eigh(gram)
    return _times_inverse_sqrt(A, eigvals.clamp_min(_GRAM_POLAR_EIG_FLOOR * eigvals[..., -1:]), W)


def _gram_of_orthonormal_blocks(A: Tensor, block_size: int) -> Tensor:
    """Lower triangle of ``A^T A`` (all :func:`torch.linalg.eigh` reads) for orthonormal column blocks."""
    if A.ndim != 2 or A.shape[-1] % block_size:
        raise ValueError(f"expected one matrix whose {A.shape[-1]} columns are blocks of {block_size}")
    n = A.shape[-1]
    gram = torch.eye(n, dtype=A.dtype, device=A.device)
    for start in range(0, n - block_size, block_size):
        end = start + block_size
        gram[end:, start:end] = A[:, end:].mT @ A[:, start:end]
    return gram


def _times_inverse_sqrt(A: Tensor, eigvals: Tensor, eigvecs: Tensor) -> Tensor:
    """``A (A^T A)^{-1/2}`` given the eigendecomposition of ``A^T A``."""
    return A @ ((eigvecs * eigvals.rsqrt().unsqueeze(-2)) @ eigvecs.mT)


def whitening(A: Tensor, eps: float = 1e-12) -> Tensor:
    """``A (A^T A)^{-1/2}`` through an eigendecomposition of the Gram matrix (TSVM_2, Prop. 4.1).

    Equal to :func:`polar_factor` for full-column-rank ``A``; squares the condition number, so
    in float32 it is less precise. ``eps`` guards the inverse square root exactly as published.
    """
    eigvals, Q = symmetric_eigh(A.mT @ A)
    inv_sqrt = 1.0 / (torch.sqrt(torch.abs(eigvals)) + eps)
    return A @ (Q * inv_sqrt.unsqueeze(-2)) @ Q.mT


def top_components(batch: Tensor, k: int, mode: SVDMode = "exact") -> tuple[Tensor, Tensor, Tensor]:
    """Top-k triplets ``(U [T, m, k], s [T, k], V [T, n, k])`` of a batch [T, m, n] of any orientation.

    Wide matrices are decomposed through their transpose (same triplets, several times faster on CPU).
    """
    if batch.shape[-2] < batch.shape[-1]:
        parts = truncated_svd(batch.mT, k, mode)
        return parts.Vh.mT, parts.s, parts.U
    parts = truncated_svd(batch, k, mode)
    return parts.U, parts.s, parts.Vh.mT


def sum_of_truncations(batch: Tensor, k: int, centre: Tensor | None = None) -> Tensor:
    """Σi of the rank-k truncations of the matrices Ai = batch[i] − centre ([T, m, n]; no centre: batch[i]):
    Σi Ai Vi Viᵀ (or Σi Ui Uiᵀ Ai for wide ones), Vi the top-k eigenvectors of the smaller Gram matrix.

    Only the projector onto the top-k singular subspace is needed, not the triplets. The Gram matrix is formed and
    decomposed in float64 (:func:`float64_gram`): on bench/merge.py's synthetic ViT-B-32 checkpoints a float32 Gram
    put CART's matrices up to 8.4e-5 (8 tasks, k = 92 of 768) and 5.9e-3 (20 tasks, k = 245: every matrix checked
    over SPEC_BEYOND's 1e-4) from their float64 definition; the float64 Gram, 5.0e-7 and 1.3e-6. One task at a time,
    so the workspace is one task's.
    """
    if k <= 0:
        return torch.zeros_like(batch[0])
    wide = batch.shape[-2] < batch.shape[-1]
    out = torch.zeros_like(batch[0])
    for task in batch:
        A = task if centre is None else task - centre
        if wide:
            U = symmetric_eigh(float64_gram(A.mT))[1][:, -k:].to(A.dtype)
            out.addmm_(U, U.mT @ A)
        else:
            V = symmetric_eigh(float64_gram(A))[1][:, -k:].to(A.dtype)
            out.addmm_(A @ V, V.mT)
    return out


def thin_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``(U [m, r], s [r], V [n, r])`` of one matrix of any orientation (wide ones through the transpose)."""
    if A.shape[-2] < A.shape[-1]:
        V, s, Uh = linalg_svd(A.mT)
        return Uh.mT, s, V
    U, s, Vh = linalg_svd(A)
    return U, s, Vh.mT
