"""Isotropic merging, Iso-C and Iso-CTS (Marczak et al., ICML 2025): the per-entry math of SPEC_BEYOND §B2-§B3.

Both flatten the spectrum of the merged matrix: every singular value becomes the mean σ̄ of the singular values
it is built from, so that no task's dominant directions drown the others'. All functions act on one entry's stack
of task matrices ``deltas [T, rows, cols]`` and are pure: no I/O, no global state, any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .svd import polar_factor, thin_svd, top_components

#: Tasks whose residuals are formed at once (tall entries): bounds the workspace, not the result.
_RESIDUAL_CHUNK = 4


def iso_c_matrix(deltas: Tensor) -> Tensor:
    """Iso-C: σ̄ · U Vᵀ for the thin SVD U diag(s) Vᵀ of Δ = Σ τi, σ̄ the mean of all r singular values.

    U Vᵀ is the polar factor of Δ, and σ̄ = tr(Uᵀ Δ V)/r = ⟨U Vᵀ, Δ⟩/r, so no singular values are needed beyond
    what the polar factor computes (its Gram route for tall entries is as accurate as the SVD there).
    """
    total = deltas.sum(dim=0)
    return _flat_spectrum(polar_factor(total), total)


def _flat_spectrum(polar: Tensor, total: Tensor) -> Tensor:
    """σ̄ · polar, with σ̄ = ⟨polar, Δ⟩ / r: the mean singular value of Δ when polar = U Vᵀ of Δ."""
    rank = min(total.shape)
    return polar * ((polar * total).sum() / rank)


@dataclass(frozen=True)
class IsoCTSSizes:
    """Sizes of Iso-CTS' subspaces for one matrix: ``common + num_tasks · per_task == rank``."""

    rank: int
    common: int
    per_task: int


def iso_cts_sizes(rows: int, cols: int, num_tasks: int, common_space_fraction: float) -> IsoCTSSizes:
    """The authors' size rule (§B3 step 1), rounding included.

    c0 = ⌊f·r⌋; the task-specific total ts = round((r − c0)/T)·T with Python's round-half-to-even (4/8 = 0.5
    rounds to 0: r = 17, T = 8 keeps no task-specific components); c = r − ts. Raises ValueError when the rule
    gives a negative common size, which the authors' code does not catch (f = 0.2, r = 3, T = 2 gives c = −1).
    """
    if num_tasks < 1:
        raise ValueError(f"Iso-CTS needs at least one task, got {num_tasks}")
    if not 0.0 <= common_space_fraction <= 1.0:
        raise ValueError(f"iso_cts: common_space_fraction={common_space_fraction} is outside [0, 1]")
    rank = min(rows, cols)
    common0 = int(common_space_fraction * rank)
    task_total = round((rank - common0) / num_tasks) * num_tasks  # round() is half-to-even, as published
    common = rank - task_total
    if common < 0:
        raise ValueError(
            f"iso_cts: common_space_fraction={common_space_fraction} gives a negative common subspace size "
            f"({common}) for a {rows}x{cols} matrix and {num_tasks} tasks (rank {rank}: {task_total} task-specific "
            "components requested). Use a larger common_space_fraction (the published value is 0.8)."
        )
    return IsoCTSSizes(rank=rank, common=common, per_task=task_total // num_tasks)


def iso_cts_matrix(deltas: Tensor, common_space_fraction: float = 0.8) -> Tensor:
    """Iso-CTS for one matrix: common subspace of Σ τi plus each task's own top directions, orthogonalized,
    flat spectrum (§B3 steps 2-5).

    Not transpose-equivariant: the task residuals are τi minus their projection on the common *left* singular
    vectors (the first dimension, ``nn.Linear``'s output side), so the orientation of ``deltas`` matters. Only the
    SVD solvers see transposed copies, which changes nothing.
    """
    num_tasks, rows, cols = deltas.shape
    sizes = iso_cts_sizes(rows, cols, num_tasks, common_space_fraction)
    total = deltas.sum(dim=0)
    if sizes.per_task == 0:  # c = r: Iso-C exactly, the residual SVDs are not needed
        return iso_c_matrix(deltas)
    U, s, V = thin_svd(total)
    Uc, sc, Vc = U[:, :sizes.common], s[:sizes.common], V[:, :sizes.common]
    Ur, sr, Vr = _residual_top_components(deltas, U, sizes)
    U_hat = torch.cat([Ur.permute(1, 0, 2).reshape(rows, -1), Uc], dim=1)  # [rows, r]
    V_hat = torch.cat([Vr.permute(1, 0, 2).reshape(cols, -1), Vc], dim=1)  # [cols, r]
    mean_singular_value = (sr.sum() + sc.sum()) / sizes.rank
    return (polar_factor(U_hat) @ polar_factor(V_hat).mT) * mean_singular_value


def _residual_top_components(deltas: Tensor, U: Tensor, sizes: IsoCTSSizes) -> tuple[Tensor, Tensor, Tensor]:
    """Top ``sizes.per_task`` triplets of every residual Ri = τi − Uc Ucᵀ τi (the one-sided projection, §B3 step 3).

    When U is square (rows = r: square and wide entries), the complement of Uc is spanned by U's remaining r − c
    columns U⊥, so Ri = U⊥ (U⊥ᵀ τi): the SVD of the small (r − c) × cols matrix U⊥ᵀ τi gives Ri's triplets
    exactly (left vectors mapped through U⊥), at a fraction of the cost of decomposing Ri. Tall entries (rows > r)
    have a larger complement, and Ri is formed.
    """
    rows = deltas.shape[-2]
    if rows == sizes.rank:
        complement = U[:, sizes.common:]  # [rows, r − c]
        Uy, sr, Vr = top_components(complement.mT @ deltas, sizes.per_task)
        return complement @ Uy, sr, Vr
    Uc = U[:, :sizes.common]
    # A few tasks at a time: the residuals of every task at once would double the entry's memory.
    parts = [top_components(chunk - Uc @ (Uc.mT @ chunk), sizes.per_task)
             for chunk in deltas.split(_RESIDUAL_CHUNK)]
    return tuple(torch.cat(factors) for factors in zip(*parts))  # type: ignore[return-value]
