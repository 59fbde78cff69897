"""DC-Merge, full fine-tuning path (CVPR 2026): the per-entry math of SPEC_BEYOND §B4.

Each task's rank-⌊r/T⌋ truncation is expressed in a shared orthonormal "cover" basis (the polar factors of the
stacked singular vectors), trimmed to its largest entries, merged TIES-style with sign election, and only each
task's own diagonal block is kept before going back to weight space. Pure functions on one entry's stack
``deltas [T, rows, cols]``; no I/O, no global state, any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .svd import polar_factor, top_components
from .tsv import components_per_task

#: The authors' trim density: each task keeps its top 0.1 % entries (of r² coordinates) in the cover basis.
DEFAULT_DENSITY = 0.001


def kept_per_task(rank: int, density: float = DEFAULT_DENSITY) -> int:
    """Entries of the r × r cover-basis matrix each task keeps: max(1, ⌊density · r²⌋) (589 for r = 768)."""
    return max(1, int(density * rank * rank))


def dc_merge_matrix(deltas: Tensor, density: float = DEFAULT_DENSITY, *, num_tasks: int | None = None) -> Tensor:
    """DC-Merge for one matrix (§B4 steps 1-7).

    ``deltas`` holds the tasks that changed this entry; ``num_tasks`` (default: all of them) is the number of
    merged tasks, which sets k = ⌊r/T⌋. Tasks whose matrix is all zero are left out of the cover basis (their
    singular vectors would be arbitrary; the authors' result there is implementation-defined).

    Only what the block mask keeps is computed: with B = [Ŭ_1 … Ŭ_T'] (the top-k left singular vectors of every
    task) and Cu = polar(B) (the non-zero part of the published, zero-padded cover basis; its completion
    columns only ever meet masked-out coordinates), Mi = Cuᵀ Ti Cvᵀ is the T'k × T'k product
    (Cuᵀ Ui) diag(si) (Viᵀ Cvᵀ); the coordinates beyond T'k, zero in exact arithmetic, are never formed.
    """
    total_tasks, rows, cols = deltas.shape
    num_tasks = total_tasks if num_tasks is None else num_tasks
    rank = min(rows, cols)
    k = components_per_task(rows, cols, num_tasks)
    nonzero = torch.linalg.vector_norm(deltas.flatten(1), ord=torch.inf, dim=1) > 0
    if k == 0 or not bool(nonzero.any()):
        return torch.zeros_like(deltas[0])
    if not bool(nonzero.all()):
        deltas = deltas[nonzero]
    present = deltas.shape[0]
    U, s, V = top_components(deltas, k)  # [T', rows, k], [T', k], [T', cols, k]
    cover_u = polar_factor(U.permute(1, 0, 2).reshape(rows, present * k))  # [rows, T'k]
    cover_v = polar_factor(V.permute(1, 0, 2).reshape(cols, present * k))  # [cols, T'k]
    left = cover_u.mT @ U  # [T', T'k, k]
    right = V.mT @ cover_v  # [T', k, T'k]
    projected = (left * s.unsqueeze(-2)) @ right  # Mi, [T', T'k, T'k]
    trimmed = _trim(projected, kept_per_task(rank, _checked_density(density)))
    merged_blocks = _elected_mean_of_blocks(trimmed, present, k)  # [T', k, k]
    # τMT = Σ_j Cu_j A_jj Cv_jᵀ, Cu_j the j-th block of k cover columns.
    cu = cover_u.reshape(rows, present, k).permute(1, 0, 2)
    cv = cover_v.reshape(cols, present, k).permute(1, 0, 2)
    return torch.einsum("jrk,jkl,jcl->rc", cu, merged_blocks, cv)


def _checked_density(density: float) -> float:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"dc_merge: density={density} is outside (0, 1]; it is the fraction of each task's r² "
                         "cover-basis coordinates kept (the authors' value is 0.001)")
    return density


def _trim(projected: Tensor, keep: int) -> Tensor:
    """Each task's Mi ⊙ [|Mi| ≥ t_i], t_i its keep-th largest |entry| counted over all r² coordinates.

    The coordinates beyond T'k that are not formed are zero, so they only matter when ``keep`` exceeds the
    formed entries: then t_i = 0 and everything is kept, as published.
    """
    flat = projected.flatten(1).abs()
    if keep > flat.shape[1]:
        return projected
    threshold = torch.topk(flat, keep, dim=1, sorted=False).values.amin(dim=1)
    return projected * (projected.abs() >= threshold.view(-1, 1, 1))


def _elected_mean_of_blocks(trimmed: Tensor, present: int, k: int) -> Tensor:
    """Sign-elected disjoint mean (§B4 step 6) on the diagonal k × k blocks only, the ones the mask keeps.

    σ = sign(Σ M̃i); A = mean of the M̃i whose sign equals σ (trimmed zeros never count); 0 where Σ M̃i = 0.
    """
    idx = torch.arange(present, device=trimmed.device)
    blocks = trimmed.reshape(present, present, k, present, k)[:, idx, :, idx, :]  # [block j, task i, k, k]
    elected = torch.sign(blocks.sum(dim=1, keepdim=True))
    agree = (torch.sign(blocks) == elected) & (blocks != 0)
    counts = agree.sum(dim=1).clamp_min(1)
    return (blocks * agree).sum(dim=1) / counts
