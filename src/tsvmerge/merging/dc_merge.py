"""DC-Merge, full fine-tuning path (CVPR 2026): the per-entry math of SPEC_BEYOND §B4.

Each task's rank-⌊r/T⌋ truncation is expressed in a shared orthonormal "cover" basis (the polar factors of the
stacked singular vectors), trimmed to its largest entries, merged TIES-style with sign election, and only each
task's own diagonal block is kept before going back to weight space. :func:`dc_merge_matrix` acts on one entry's
stack ``deltas [T, rows, cols]``; :func:`dc_merge_factors` computes the same from each task's thin SVD (LoRA
updates: no rows × cols matrix is formed). Pure functions; no I/O, no global state, any device.

Rank-deficient inputs. A task of rank below k has numerically zero singular values among its top k, whose vectors
are arbitrary (whatever the SVD returns for a null space); as published they enter the cover basis and change
every task's coordinates. Here they are zeroed, as TSV-M does (:func:`~tsvmerge.merging.tsv.significant_components`):
a zeroed column of the stacked Ŭ is, like the published zero padding beyond T·k, a column whose cover vector is an
arbitrary completion that the block mask removes (see :func:`merge_in_cover_basis`), so the result is defined by
the significant components alone. The trim count keep = max(1, ⌊density·r²⌋) stays that of the full r × r Mi. On
full-rank task matrices nothing is zeroed and the published definition is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .svd import polar_factor, top_components
from .tsv import LowRankFactors, components_per_task, significant_components

#: The authors' trim density: each task keeps its top 0.1 % entries (of r² coordinates) in the cover basis.
DEFAULT_DENSITY = 0.001


def kept_per_task(rank: int, density: float = DEFAULT_DENSITY) -> int:
    """Entries of the r × r cover-basis matrix each task keeps: max(1, ⌊density · r²⌋) (589 for r = 768)."""
    return max(1, int(density * rank * rank))


def dc_merge_matrix(deltas: Tensor, density: float = DEFAULT_DENSITY, *, num_tasks: int | None = None) -> Tensor:
    """DC-Merge for one matrix (§B4 steps 1-7).

    ``deltas`` holds the tasks that changed this entry; ``num_tasks`` (default: all of them) is the number of
    merged tasks, which sets k = ⌊r/T⌋. Tasks whose matrix is all zero are left out of the cover basis (their
    singular vectors would be arbitrary; the authors' result there is implementation-defined), and so are the
    numerically zero components among the others' top k (see the module's note).
    """
    total_tasks, rows, cols = deltas.shape
    num_tasks = total_tasks if num_tasks is None else num_tasks
    k = components_per_task(rows, cols, num_tasks)
    nonzero = torch.linalg.vector_norm(deltas.flatten(1), ord=torch.inf, dim=1) > 0
    if k == 0 or not bool(nonzero.any()):
        return torch.zeros_like(deltas[0])
    if not bool(nonzero.all()):
        deltas = deltas[nonzero]
    U, s, V = top_components(deltas, k)  # [T', rows, k], [T', k], [T', cols, k]
    kept = significant_components(s, rows, cols)
    components = [(U_t[:, keep], s_t[keep], V_t[:, keep]) for U_t, s_t, V_t, keep in zip(U, s, V, kept)]
    merged = merge_in_cover_basis(components, min(rows, cols), _checked_density(density))
    # τMT = Σ_j Cu_j A_jj Cv_jᵀ, Cu_j the cover columns of task j's block.
    out = deltas.new_zeros(rows, cols)
    for cu, block, cv in merged.blocks():
        out.addmm_(cu @ block, cv.mT)
    return out


def dc_merge_factors(components: Sequence[tuple[Tensor, Tensor, Tensor]], rows: int, cols: int, num_tasks: int,
                     density: float = DEFAULT_DENSITY) -> LowRankFactors:
    """DC-Merge from each changing task's thin SVD ``(U [rows, q], s [q], V [cols, q])`` (significant components
    only, descending: LoRA updates through their factors), as factors equal to :func:`dc_merge_matrix` of the
    dense matrices: each task's top min(k, q) components are what the dense path keeps of its top k. The result
    Σ_j Cu_j A_jj Cv_jᵀ comes as the SVDs of the small blocks A_jj, rank at most Σ_j min(k, q_j)."""
    k = components_per_task(rows, cols, num_tasks)
    components = [(U[:, :k], s[:k], V[:, :k]) for U, s, V in components if s.numel() > 0]
    if k == 0 or not components:
        device = components[0][0].device if components else None
        return LowRankFactors(torch.zeros(rows, 0, device=device), torch.zeros(0, device=device),
                              torch.zeros(cols, 0, device=device))
    merged = merge_in_cover_basis(components, min(rows, cols), _checked_density(density))
    Us, ss, Vs = [], [], []
    for cu, block, cv in merged.blocks():
        P, S, Qh = torch.linalg.svd(block, full_matrices=False)
        Us.append(cu @ P)
        ss.append(S)
        Vs.append(cv @ Qh.mT)
    return LowRankFactors(torch.cat(Us, dim=1), torch.cat(ss), torch.cat(Vs, dim=1))


@dataclass(frozen=True)
class CoverMerge:
    """Steps 3-6 of one entry: the cover bases Cu [rows, p], Cv [cols, p] (p kept components in all) and the merged
    diagonal block A_jj of each task j, over the ``sizes[j]`` coordinates of its kept components."""

    cover_u: Tensor
    cover_v: Tensor
    diagonal: list[Tensor]
    sizes: list[int]

    def blocks(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(Cu_j, A_jj, Cv_j) per task: τMT = Σ_j Cu_j A_jj Cv_jᵀ (step 7)."""
        out, start = [], 0
        for size, block in zip(self.sizes, self.diagonal, strict=True):
            out.append((self.cover_u[:, start:start + size], block, self.cover_v[:, start:start + size]))
            start += size
        return out


def merge_in_cover_basis(components: Sequence[tuple[Tensor, Tensor, Tensor]], rank: int,
                         density: float) -> CoverMerge:
    """Steps 2-6 on each present task's kept top components ``(U_j [rows, q_j], s_j, V_j [cols, q_j])``, q_j ≤ k
    (all k for a full-rank task; fewer where numerically zero ones were dropped).

    Only the coordinates of kept components are formed. In the published layout Ŭ = [U_1 … U_T'] is rows × r,
    zero beyond T'k, and here also zero at dropped components. With X its non-zero columns (full column rank),
    polar(Ŭ) is polar(X) on those columns and an arbitrary orthonormal completion W ⊥ range(X) on the zero ones.
    Every Ti lies in range(X) on the left (and in its counterpart on the right), so the rows (columns) of
    Mi = Cuᵀ Ti Cvᵀ at W's coordinates are zero: zeros never change the keep-th largest |entry| (when fewer than
    keep entries are non-zero the threshold is 0 and everything is kept, either way), never count in the sign
    election and give A = 0 there, and Cu (A ⊙ B) Cv multiplies W by those zero rows. So the result does not depend
    on W, and it is Σ_j Cu_j A_jj Cv_jᵀ over the formed coordinates alone, with each task's block reduced to its
    kept components. The trim counts keep = max(1, ⌊density·r²⌋) over all r² coordinates, as published.
    """
    cover_u = polar_factor(torch.cat([U for U, _, _ in components], dim=1))  # [rows, p]
    cover_v = polar_factor(torch.cat([V for _, _, V in components], dim=1))  # [cols, p]
    projected = torch.stack([((cover_u.mT @ U) * s) @ (V.mT @ cover_v) for U, s, V in components])  # Mi [T', p, p]
    trimmed = _trim(projected, kept_per_task(rank, density))
    sizes = [s.numel() for _, s, _ in components]
    return CoverMerge(cover_u, cover_v, _elected_mean_of_blocks(trimmed, sizes), sizes)


def _checked_density(density: float) -> float:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"dc_merge: density={density} is outside (0, 1]; it is the fraction of each task's r² "
                         "cover-basis coordinates kept (the authors' value is 0.001)")
    return density


def _trim(projected: Tensor, keep: int) -> Tensor:
    """Each task's Mi ⊙ [|Mi| ≥ t_i], t_i its keep-th largest |entry| counted over all r² coordinates.

    The coordinates that are not formed are zero, so they only matter when ``keep`` exceeds the formed entries:
    then t_i = 0 and everything is kept, as published.
    """
    flat = projected.flatten(1).abs()
    if keep > flat.shape[1]:
        return projected
    threshold = torch.topk(flat, keep, dim=1, sorted=False).values.amin(dim=1)
    return projected * (projected.abs() >= threshold.view(-1, 1, 1))


def _elected_mean_of_blocks(trimmed: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Sign-elected disjoint mean (§B4 step 6) on the diagonal blocks only (task j's ``sizes[j]`` coordinates),
    the ones the mask keeps.

    σ = sign(Σ M̃i); A = mean of the M̃i whose sign equals σ (trimmed zeros never count); 0 where Σ M̃i = 0.
    """
    out, start = [], 0
    for size in sizes:
        block = trimmed[:, start:start + size, start:start + size]  # [task i, q_j, q_j]
        elected = torch.sign(block.sum(dim=0, keepdim=True))
        agree = (torch.sign(block) == elected) & (block != 0)
        out.append((block * agree).sum(dim=0) / agree.sum(dim=0).clamp_min(1))
        start += size
    return out
