"""Isotropic merging, Iso-C and Iso-CTS (Marczak et al., ICML 2025): the per-entry math of SPEC_BEYOND §B2-§B3.

Both flatten the spectrum of the merged matrix: every singular value becomes the mean σ̄ of the singular values
it is built from, so that no task's dominant directions drown the others'. The dense functions act on one entry's
stack of task matrices ``deltas [T, rows, cols]``; the ``*_factors`` functions compute the same from low-rank task
matrices given as thin sides (τi = left @ rightᵀ, e.g. LoRA updates) without forming any rows × cols matrix. All are
pure: no I/O, no global state, any device.

Rank-deficient inputs. As published, both methods give every one of the r = min(rows, cols) singular directions
of the sum Δ = Σ τi (and, for Iso-CTS, the top directions of each task's residual) the weight σ̄, null directions
included: whatever vectors the SVD returns for a zero singular value then enter the result, so the merge of a
low-rank sum (LoRA updates) depends on round-off. Here numerically zero singular components carry no direction;
they are dropped, while σ̄ still divides by r (a dropped component counts as a zero singular value):

- Δ has null directions by structure only when the tasks' numerical ranks ρi add up to less than r (LoRA updates,
  ρi ≪ r/T). Then Δ's components that are not significant (:func:`~tsvmerge.merging.tsv.significant_components`,
  numpy's matrix_rank rule) are dropped (:func:`kept_of_sum`). When Σ ρi ≥ r every component of Δ is kept, as
  published: the smallest singular values of a full-rank sum can be far below that rule's tolerance (a square
  matrix with a noise floor has σ_min ≈ σ_floor / r, and below max(m, n)·eps·σ1 for most 768 × 768 sums of
  fine-tuning deltas) and are real, well-determined directions.
- A residual component (Iso-CTS) is kept when significant against its task's σ1 (:func:`significant_against`):
  the top k of a full-rank task's residual are far above round-off, while the residual of a task lying in the
  common subspace is round-off alone.

On full-rank task matrices the published definitions are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .lora import product_svd
from .svd import polar_factor, thin_svd, top_components
from .tsv import LowRankFactors, significant_components

#: Tasks whose residuals are formed at once (tall entries): bounds the workspace, not the result.
_RESIDUAL_CHUNK = 4

#: A task matrix τi = left @ rightᵀ given by its two thin sides (left [rows, r], right [cols, r]).
Sides = tuple[Tensor, Tensor]


def significant_against(s: Tensor, reference: Tensor, rows: int, cols: int) -> Tensor:
    """Which of the singular values ``s`` are not numerically zero at the scale ``reference`` (broadcast against
    ``s``): above max(rows, cols)·eps·reference, the rule of :func:`significant_components` with a reference that
    is not ``s``'s own largest value. A residual (I − P)·τi carries the round-off of τi, not of itself: judged
    against its own σ1, the residual of a task lying in the projected-out subspace would be all round-off and yet
    keep its largest component."""
    return s > reference * (max(rows, cols) * torch.finfo(torch.float32).eps)


def _thin_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``(U [m, r], s [r], V [n, r])`` of one matrix; tall inputs (twice as many rows as columns, either
    orientation) go through a QR first, the cheaper route to the same triplets."""
    rows, cols = A.shape
    if max(rows, cols) < 2 * min(rows, cols):
        return thin_svd(A)
    tall = A if rows >= cols else A.mT
    Q, R = torch.linalg.qr(tall)
    U_r, s, V = thin_svd(R)
    return (Q @ U_r, s, V) if rows >= cols else (V, s, Q @ U_r)


def empty_factors(rows: int, cols: int, device: torch.device | str | None = None) -> LowRankFactors:
    """The zero rows × cols matrix as factors of rank 0."""
    return LowRankFactors(torch.zeros(rows, 0, device=device), torch.zeros(0, device=device),
                          torch.zeros(cols, 0, device=device))


def tasks_are_low_rank(s: Tensor, rows: int, cols: int, task_ranks: Iterable[int]) -> bool:
    """Whether Δ = Σ τi has null directions by structure: Δ (singular values ``s``, descending; missing ones are
    zeros) is numerically rank-deficient and the tasks' numerical ranks add up to less than r = min(rows, cols).
    ``task_ranks`` is read only when Δ is rank-deficient, and only as far as needed."""
    rank = min(rows, cols)
    if s.numel() == rank and bool(significant_components(s, rows, cols).all()):
        return False
    total = 0
    for found in task_ranks:
        total += found
        if total >= rank:
            return False
    return True


def kept_of_sum(s: Tensor, rows: int, cols: int, low_rank: Callable[[], bool]) -> Tensor:
    """Which components of Δ = Σ τi (singular values ``s``, descending) carry a direction: the significant ones
    when the tasks are low-rank (``low_rank``, asked only when some component is not significant), all of them
    otherwise (see the module's note)."""
    keep = significant_components(s, rows, cols)
    if bool(keep.all()) or low_rank():
        return keep
    return torch.ones_like(keep)


def range_polar(A: Tensor, low_rank: Callable[[], bool]) -> Tensor:
    """The polar factor P Qᵀ of a concatenation of singular vectors (Iso-CTS' Û or V̂, rows × p), restricted to its
    significant components when the tasks are low-rank (:func:`range_polar_parts`)."""
    if not low_rank():
        return polar_factor(A)
    P, Q = range_polar_parts(A)
    return P @ Q.mT


def range_polar_parts(A: Tensor) -> tuple[Tensor, Tensor]:
    """``(P_q [rows, q], Q_q [p, q])`` of A = P S Qᵀ (thin SVD), over A's q significant components.

    Low-rank tasks can give linearly dependent columns (residual subspaces that overlap when the tasks' ranks
    exceed the common size); the polar factor's completion on the null space would then be arbitrary, and P_q Q_qᵀ
    is the part that is not. With full-rank tasks the published polar factor is kept whatever the conditioning (a
    768-column Û can have condition number ~10⁴: real geometry, not round-off).
    """
    rows, cols = A.shape
    P, s, Q = _thin_svd(A)
    keep = significant_components(s, rows, cols)
    return P[:, keep], Q[:, keep]


def numerical_ranks(deltas: Tensor) -> Iterable[int]:
    """Each task matrix's numerical rank (numpy's matrix_rank rule), computed one task at a time as asked for."""
    _, rows, cols = deltas.shape
    for delta in deltas:
        s = torch.linalg.svdvals(delta if rows >= cols else delta.mT)
        yield int(significant_components(s, rows, cols).sum())


def iso_c_matrix(deltas: Tensor) -> Tensor:
    """Iso-C: σ̄ · U_q V_qᵀ for the thin SVD of Δ = Σ τi, σ̄ the mean of all r singular values (§B2).

    U_q V_qᵀ is taken over the q components :func:`kept_of_sum` keeps: all r unless the tasks are low-rank (the
    published definition), else Δ's significant ones, so that U_q V_qᵀ is unique (the polar factor of Δ
    restricted to its range) where the published U Vᵀ pairs Δ's null directions arbitrarily. σ̄ = Σ s_q / r: the
    dropped values count as zeros.
    """
    total = deltas.sum(dim=0)
    rows, cols = total.shape
    U, s, V = _thin_svd(total)
    keep = kept_of_sum(s, rows, cols, lambda: tasks_are_low_rank(s, rows, cols, numerical_ranks(deltas)))
    if not bool(keep.all()):
        U, s, V = U[:, keep], s[keep], V[:, keep]
    return (U * (s.sum() / min(rows, cols))) @ V.mT


def iso_c_factors(sides: Sequence[Sides | None], rows: int, cols: int) -> LowRankFactors:
    """Iso-C of low-rank task matrices (None: a task that did not change the entry), as factors equal to
    :func:`iso_c_matrix` of the dense stack: Σ τi is itself the product of the concatenated sides, whose exact SVD
    comes from two thin QRs and a small SVD; the components :func:`kept_of_sum` keeps get the flat spectrum σ̄."""
    present = [found for found in sides if found is not None]
    if not present:
        return empty_factors(rows, cols)
    U, s, V = _sum_svd(present)
    keep = kept_of_sum(s, rows, cols, lambda: tasks_are_low_rank(s, rows, cols, _factored_ranks(present, rows, cols)))
    U, s, V = U[:, keep], s[keep], V[:, keep]
    return LowRankFactors(U, torch.full_like(s, float(s.sum()) / min(rows, cols)), V)


def _factored_ranks(present: Sequence[Sides], rows: int, cols: int) -> Iterable[int]:
    """Each low-rank task matrix's numerical rank, from its exact singular values."""
    for left, right in present:
        yield int(significant_components(product_svd(left, right)[1], rows, cols).sum())


def _sum_svd(present: Sequence[Sides]) -> tuple[Tensor, Tensor, Tensor]:
    """Every component of the exact thin SVD of Σ left_i right_iᵀ = [left_1 …] [right_1 …]ᵀ."""
    return product_svd(torch.cat([left for left, _ in present], dim=1),
                       torch.cat([right for _, right in present], dim=1))


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


def common_size(s: Tensor, sizes: IsoCTSSizes, rows: int, cols: int, low_rank: Callable[[], bool]) -> int:
    """How many of the top c components of Δ = Σ τi form the common subspace: those :func:`kept_of_sum` keeps
    among them. A null direction of Δ inside the top c is arbitrary; projected out of the residuals (step 3) it
    would remove an arbitrary direction from every task."""
    if bool(significant_components(s, rows, cols)[:sizes.common].all()):
        return sizes.common
    return int(kept_of_sum(s, rows, cols, low_rank)[:sizes.common].sum())


def iso_cts_matrix(deltas: Tensor, common_space_fraction: float = 0.8) -> Tensor:
    """Iso-CTS for one matrix: common subspace of Σ τi plus each task's own top directions, orthogonalized,
    flat spectrum (§B3 steps 2-5).

    Not transpose-equivariant: the task residuals are τi minus their projection on the common *left* singular
    vectors (the first dimension, ``nn.Linear``'s output side), so the orientation of ``deltas`` matters. Only the
    SVD solvers see transposed copies, which changes nothing.

    Rank-deficient inputs: the common subspace is the part of Δ's top c components that carries a direction
    (:func:`common_size`); a residual component is kept when it is significant against its task matrix's
    σ1 (:func:`significant_against`: a residual that is round-off keeps nothing); Û and V̂ concatenate the kept
    columns only, and σ̄ = (Σ kept singular values) / r, every dropped slot counting as zero. Zeroing the dropped
    columns of the published r-column Û, V̂ instead of removing them is the same computation once the zero
    singular components of Û and V̂ are dropped too (:func:`range_polar`): zero columns add only zero singular
    values, whose polar-factor columns — an arbitrary orthonormal completion — would otherwise be weighted by σ̄.
    """
    num_tasks, rows, cols = deltas.shape
    sizes = iso_cts_sizes(rows, cols, num_tasks, common_space_fraction)
    if sizes.per_task == 0:  # c = r: Iso-C exactly, the residual SVDs are not needed
        return iso_c_matrix(deltas)
    total = deltas.sum(dim=0)
    U, s, V = thin_svd(total)
    low_rank = functools.cache(lambda: tasks_are_low_rank(s, rows, cols, numerical_ranks(deltas)))
    common = common_size(s, sizes, rows, cols, low_rank)
    Ur, sr, Vr = _residual_top_components(deltas, U, common, sizes.per_task)
    kept = significant_against(sr, _task_scales(deltas, sr), rows, cols)  # [T, k]
    U_hat = torch.cat([Ur.permute(1, 0, 2).reshape(rows, -1)[:, kept.flatten()], U[:, :common]], dim=1)
    V_hat = torch.cat([Vr.permute(1, 0, 2).reshape(cols, -1)[:, kept.flatten()], V[:, :common]], dim=1)
    mean_singular_value = (sr[kept].sum() + s[:common].sum()) / sizes.rank
    if U_hat.shape[1] == 0:
        return total.new_zeros(rows, cols)
    return (range_polar(U_hat, low_rank) @ range_polar(V_hat, low_rank).mT) * mean_singular_value


def iso_cts_factors(sides: Sequence[Sides | None], rows: int, cols: int,
                    common_space_fraction: float = 0.8) -> LowRankFactors:
    """Iso-CTS of low-rank task matrices (one per merged task, None for a task that did not change the entry), as
    factors equal to :func:`iso_cts_matrix` of the dense stack, the projection kept on the first dimension.

    Δ = Σ τi is the product of the concatenated sides (exact SVD from thin QRs); a residual
    (I − Uc Ucᵀ)·left·rightᵀ is the product of the projected left side and the right side, so its SVD is exact
    too; the polar factors are those of thin rows × p and cols × p concatenations (p ≤ r kept columns).
    """
    sizes = iso_cts_sizes(rows, cols, len(sides), common_space_fraction)
    present = [found for found in sides if found is not None]
    if not present:
        return empty_factors(rows, cols)
    if sizes.per_task == 0:
        return iso_c_factors(present, rows, cols)
    U, s, V = _sum_svd(present)
    low_rank = functools.cache(lambda: tasks_are_low_rank(s, rows, cols, _factored_ranks(present, rows, cols)))
    common = common_size(s, sizes, rows, cols, low_rank)
    Uc = U[:, :common]
    Us, Vs, kept_values = [], [], [s[:common].sum()]
    for left, right in present:
        scale = product_svd(left, right)[1][:1]  # σ1(τi)
        Ur, sr, Vr = product_svd(left - Uc @ (Uc.mT @ left), right)
        kept = significant_against(sr[:sizes.per_task], scale, rows, cols)
        Us.append(Ur[:, :sizes.per_task][:, kept])
        Vs.append(Vr[:, :sizes.per_task][:, kept])
        kept_values.append(sr[:sizes.per_task][kept].sum())
    U_hat = torch.cat([*Us, Uc], dim=1)
    V_hat = torch.cat([*Vs, V[:, :common]], dim=1)
    mean_singular_value = float(torch.stack(kept_values).sum()) / sizes.rank
    if U_hat.shape[1] == 0:
        return empty_factors(rows, cols, U.device)
    if not low_rank():
        return LowRankFactors(polar_factor(U_hat), U_hat.new_full((U_hat.shape[1],), mean_singular_value),
                              polar_factor(V_hat))
    # σ̄ · P_u Q_uᵀ Q_v P_vᵀ: as factors, the SVD of the small Q_uᵀ Q_v (all ones when Û, V̂ have full rank)
    P_u, Q_u = range_polar_parts(U_hat)
    P_v, Q_v = range_polar_parts(V_hat)
    W, S, Zh = torch.linalg.svd(Q_u.mT @ Q_v, full_matrices=False)
    return LowRankFactors(P_u @ W, S * mean_singular_value, P_v @ Zh.mT)


def _task_scales(deltas: Tensor, residual_values: Tensor) -> Tensor:
    """Per task, a scale against which its residual singular values are judged significant with the same outcome
    as against σ1(τi): ‖τi‖_F (≥ σ1) where that already decides every value (any full-rank task matrix: no extra
    cost), σ1(τi) itself for the tasks with a value at or below the Frobenius-based threshold."""
    _, rows, cols = deltas.shape
    scales = torch.linalg.vector_norm(deltas.flatten(1), dim=1)
    undecided = ~significant_against(residual_values, scales.unsqueeze(1), rows, cols) & (residual_values > 0)
    for task in undecided.any(dim=1).nonzero().flatten().tolist():
        scales[task] = torch.linalg.matrix_norm(deltas[task], ord=2)
    return scales.unsqueeze(1)


def _residual_top_components(deltas: Tensor, U: Tensor, common: int, per_task: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top ``per_task`` triplets of every residual Ri = τi − Uc Ucᵀ τi, Uc = U[:, :common] (the one-sided
    projection, §B3 step 3).

    When U is square (rows = r: square and wide entries), the complement of Uc is spanned by U's remaining
    columns U⊥ (null directions of Δ included: together they span the complement whatever they are), so
    Ri = U⊥ (U⊥ᵀ τi): the SVD of the small (rows − common) × cols matrix U⊥ᵀ τi gives Ri's triplets exactly (left
    vectors mapped through U⊥), at a fraction of the cost of decomposing Ri. Tall entries (rows > r) have a larger
    complement, and Ri is formed.
    """
    rows = deltas.shape[-2]
    if rows == U.shape[1]:
        complement = U[:, common:]  # [rows, rows − common]
        Uy, sr, Vr = top_components(complement.mT @ deltas, per_task)
        return complement @ Uy, sr, Vr
    Uc = U[:, :common]
    # A few tasks at a time: the residuals of every task at once would double the entry's memory.
    parts = [top_components(chunk - Uc @ (Uc.mT @ chunk), per_task)
             for chunk in deltas.split(_RESIDUAL_CHUNK)]
    return tuple(torch.cat(factors) for factors in zip(*parts))  # type: ignore[return-value]
