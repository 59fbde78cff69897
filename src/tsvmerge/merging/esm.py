"""Essential Subspace Merging (ESM, SPEC_ESM): TSV-M's idea moved from the weights to the activations.

Per task and per linear map, the principal directions of the output shift ΔO = X·ΔWᵀ that the task's own inputs X
produce (:func:`essential_subspace`, SPEC_ESM E3); per map, the top ⌊m/T⌋ directions of every task weighted and
orthogonalized into one flat-spectrum update (:func:`esm_merge_matrix`, E4); over the model, the inter-layer
rescaling of the merged maps by their norms (:func:`interlayer_factors`, E6). Pure functions on tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .svd import polar_factor, thin_svd

__all__ = ["EssentialSubspace", "esm_merge_matrix", "essential_subspace", "interlayer_factors",
           "interlayer_group", "mean_singular_value_and_polar"]


@dataclass(frozen=True)
class EssentialSubspace:
    """One task's essential subspace of one map: the top-k eigenvectors of the uncentered PCA of ΔO = X·ΔWᵀ
    (``basis`` [m, k], unit columns, by eigenvalue descending), their eigenvalues (``eigenvalues`` [k], σ² of ΔO:
    only their ratios matter) and ``norm`` ν = ‖Qᵀ ΔW‖_F over the whole padded basis Q (SPEC_ESM E4 step 1)."""

    basis: Tensor
    eigenvalues: Tensor
    norm: float
    #: False when k exceeded the rank of ΔO, so that some directions are null ones (SPEC_ESM E9: no parity).
    determined: bool = True


def essential_subspace(x: Tensor, delta: Tensor, k: int) -> EssentialSubspace:
    """The top-k essential subspace of ``delta`` ([m, n_in], ΔW = θi − θ0) on the input rows ``x`` ([N, n_in]).

    The authors take the thin SVD of ΔO = X ΔWᵀ ([N, m]) and, when N < m, pad its r = N right singular vectors with
    the unit vectors e_{r+1} … e_m (eigenvalue 0). Here X is first reduced to the R of its QR factorization when N
    and m both exceed n_in (ΔO = Q_x · R ΔWᵀ: the same singular values and right singular vectors), and only the top k
    are kept.

    ν² sums ‖bⱼᵀ ΔW‖² over the r directions and ‖ΔW[j, :]‖² over the padded rows j ≥ r. The r directions span the row
    space of ΔO, which is the range of ΔW whenever X has full column rank; their null completions (r > rank) are
    orthogonal to it. So the first sum is ‖ΔW‖²_F (SPEC_ESM E4 step 1); with too few rows for X to have full
    column rank the authors' value depends on LAPACK's null vectors (E9: implementation-defined) and this one is kept.
    """
    rows, n_in = x.shape
    m = delta.shape[0]
    if k <= 0:
        raise ValueError(f"k = {k}: the map has fewer output rows ({m}) than there are tasks")
    x = x.to(torch.float32)
    delta = delta.to(x.device, torch.float32)
    # ΔO itself when it is the smaller product; else R ΔWᵀ ([n_in, m]): ΔO up to an orthogonal factor on the left
    reduced = torch.linalg.qr(x, mode="r")[1] if rows > n_in and m > n_in else x
    shift = reduced @ delta.mT
    r = min(rows, m)
    available = min(shift.shape)
    norm_sq = delta.square().sum()
    if r < m:
        norm_sq = norm_sq + delta[r:].square().sum()
    # A full thin SVD: at ESM's k (a third to half of the spectrum, or more) as fast as a truncated one (measured).
    directions, sigma, _ = thin_svd(shift.mT)  # left vectors of (ΔO)ᵀ: ΔO's right singular vectors
    if k <= available:
        kept, values = directions[:, :k].clone(), sigma[:k].square()  # copies: no view keeps the whole basis
        return EssentialSubspace(kept, values, float(norm_sq.sqrt()), bool(sigma[k - 1] > 0))
    kept, eigenvalues = _complete(directions, sigma.square(), k, r, m)
    return EssentialSubspace(kept, eigenvalues, float(norm_sq.sqrt()), False)


def _complete(directions: Tensor, eigenvalues: Tensor, k: int, r: int, m: int) -> tuple[Tensor, Tensor]:
    """k > the directions ΔO has: the authors' basis continues with null directions of ΔO up to r, then the unit
    vectors e_{r+1} … e_m; the null directions here are an orthonormal completion (implementation-defined)."""
    available = directions.shape[1]
    parts = [directions]
    if r > available:
        complete = torch.linalg.qr(directions, mode="complete")[0][:, available:r]
        parts.append(complete)
    if m > r:
        parts.append(torch.eye(m, dtype=directions.dtype, device=directions.device)[:, r:])
    basis = torch.cat(parts, dim=1)[:, :k].clone()  # not a view of the whole padded basis
    values = torch.cat([eigenvalues, eigenvalues.new_zeros(k)])[:k]
    return basis, values


def mean_singular_value_and_polar(A: Tensor) -> tuple[float, Tensor]:
    """s̄(A), the mean of A's min(rows, cols) singular values, and its polar factor P Rᵀ (A = P diag(s) Rᵀ).

    With the polar factor Ω, Ωᵀ A = R diag(s) Rᵀ, so s̄ is its trace over min(rows, cols): no second decomposition.
    (ESM's Û is square for its two largest maps and, over a few tasks, ill-conditioned (cond ~ 10³–10⁴ measured):
    the Gram route cannot be certified there, so :func:`~.svd.polar_factor` takes the SVD.)
    """
    polar = polar_factor(A)
    return float((polar * A).sum()) / min(A.shape), polar


def esm_merge_matrix(deltas: Tensor, subspaces: Sequence[EssentialSubspace], *, eig_exponent: float = 0.15,
                     norm_power: float = 2.0, scale: float = 2.0) -> Tensor:
    """τMT of one map from every task's ΔW (``deltas`` [T, m, n]) and essential subspace (SPEC_ESM E4).

    Per task: weights w = λ^0.15 / mean over the top k of λ^0.15, U_i = Q_i diag(w), Ṽ_i = ν_i² diag(w) Q_iᵀ ΔW_i;
    Û = [U_1 … U_T], V̂ = [Ṽ_1; …; Ṽ_T] / ν̄² (ν̄ the mean norm); the columns of V̂ rescaled by (γ_l / γ̄)²
    (γ_l the column norms); result ``scale`` · s̄(Û) · s̄(V̂) · polar(Û) · polar(V̂): a flat spectrum.
    """
    if len(subspaces) != deltas.shape[0]:
        raise ValueError(f"{len(subspaces)} essential subspaces for {deltas.shape[0]} tasks")
    us, vs, norms = [], [], []
    for delta, sub in zip(deltas, subspaces, strict=True):
        basis = sub.basis.to(delta.device, delta.dtype)
        weights = sub.eigenvalues.to(delta.device, delta.dtype).pow(eig_exponent)
        weights = weights / weights.mean()
        us.append(basis * weights)
        vs.append((basis.mT @ delta) * (weights.unsqueeze(1) * sub.norm ** norm_power))
        norms.append(sub.norm)
    mean_norm = sum(norms) / len(norms)
    U = torch.cat(us, dim=1)
    V = torch.cat(vs, dim=0).div_(mean_norm ** norm_power)
    del us, vs
    gamma = torch.linalg.vector_norm(V, dim=0)
    V.mul_((gamma / gamma.mean()).pow_(norm_power))
    s_u, polar_u = mean_singular_value_and_polar(U)
    s_v, polar_v = mean_singular_value_and_polar(V)
    return (polar_u @ polar_v).mul_(scale * s_u * s_v)


_BLOCK_INDEX = re.compile(r"\.\d+\.")


def interlayer_group(key: str) -> str | None:
    """The type of a matrix inside a stack of numbered blocks (its key with the block number replaced by ``*``:
    ``…resblocks.*.mlp.c_fc.weight``), the unit of ESM's inter-layer rescaling; None outside numbered blocks."""
    if not _BLOCK_INDEX.search(key):
        return None
    return _BLOCK_INDEX.sub(".*.", key)


def interlayer_factors(norms: Mapping[str, float], power: float = 2.0) -> dict[str, float]:
    """SPEC_ESM E6: per type t (:func:`interlayer_group`), μ_t = the mean norm of its merged matrices before any
    rescaling; each matrix is multiplied by (‖τ‖ / μ_t)^power, so that layers with an above-average norm grow."""
    groups: dict[str, list[str]] = {}
    for key in norms:
        group = interlayer_group(key)
        if group is not None:
            groups.setdefault(group, []).append(key)
    factors = {}
    for keys in groups.values():
        mean = sum(norms[key] for key in keys) / len(keys)
        for key in keys:
            factors[key] = (norms[key] / mean) ** power if mean > 0 else 1.0
    return factors
