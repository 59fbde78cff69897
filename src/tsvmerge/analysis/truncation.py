"""Accuracy of θ0 + rank-truncated τi per task (Fig. 2 / 16): how low-rank the task matrices are.

For task i and a retained fraction f, every 2-D entry of τi (``text_projection`` included, as TSV-C) is replaced by
its best rank-k approximation with k = max(1, ⌊f · r⌋) (r = min(rows, cols); f = 1/T gives TSV's k), the other
entries are kept whole, and θ0 + that vector is evaluated on task i. One full SVD per entry serves every fraction.
Reference lines: θ0 + τi itself (the fine-tuned model, evaluated by the same pipeline; the published single-task
accuracy is recorded beside it) and θ0 (zero-shot).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from ..merging import TaskVectors
from ..merging.svd import linalg_svd
from ..merging.tsv import uses_svd
from .common import EvalSession

__all__ = ["TaskFactorization", "factorize_task", "truncation_curves", "truncation_rank"]


def truncation_rank(fraction: float, rank: int) -> int:
    """k = max(1, ⌊fraction · rank⌋) (round-off guarded: 0.3 · 10 is 3), at most ``rank``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"retained fractions must be in (0, 1], got {fraction}")
    return max(1, min(rank, math.floor(fraction * rank + 1e-9)))


@dataclass
class TaskFactorization:
    """One task vector: the thin SVD of each 2-D entry, the other changed entries whole."""

    matrices: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # U [m, r], s [r], Vh [r, n]
    others: dict[str, Tensor] = field(default_factory=dict)

    def truncated(self, fraction: float) -> Iterator[tuple[str, Tensor]]:
        """(key, rank-truncated entry) for every changed entry (2-D ones truncated, the rest whole)."""
        for key, (U, s, Vh) in self.matrices.items():
            k = truncation_rank(fraction, s.numel())
            yield key, (U[:, :k] * s[:k]) @ Vh[:k]
        yield from self.others.items()

    def full(self) -> Iterator[tuple[str, Tensor]]:
        """τi itself (no truncation)."""
        for key, (U, s, Vh) in self.matrices.items():
            yield key, (U * s) @ Vh
        yield from self.others.items()

    def mean_ranks(self, fraction: float) -> float:
        """Mean over 2-D entries of the number of components kept."""
        ranks = [truncation_rank(fraction, s.numel()) for _, s, _ in self.matrices.values()]
        return sum(ranks) / len(ranks) if ranks else 0.0


def factorize_task(tasks: TaskVectors, task: int, *, progress: bool = False) -> TaskFactorization:
    """Full thin SVD of every 2-D entry of τ_task (kept on the compute device)."""
    out = TaskFactorization()
    for entry in tasks.entries(f"SVD of {tasks.names[task]}", progress=progress):
        if task not in entry.changed:
            continue
        delta = entry.delta(task)
        if uses_svd(entry.key, entry.shape, include_text_projection=True):
            out.matrices[entry.key] = linalg_svd(delta)
        else:
            out.others[entry.key] = delta
    return out


def truncation_curves(session: EvalSession, fractions: Sequence[float], *, include_zeroshot: bool = True,
                      progress: bool = False) -> dict[str, Any]:
    """Per task: top-1 (and normalized top-1) of θ0 + truncated τi at each retained fraction, plus references.

    Returns ``{"fractions", "split", "num_tasks", "tasks": {dataset: {"top1": [...], "normalized_top1": [...],
    "mean_rank": [...], "finetuned_top1", "finetuned_normalized_top1", "published_finetuned_top1",
    "zeroshot_top1"}}}``.
    """
    fractions = sorted({float(f) for f in fractions})
    for f in fractions:
        truncation_rank(f, 1)  # validates the range
    assert session.tasks is not None, "the truncation analysis needs the fine-tuned checkpoints"
    out: dict[str, Any] = {"fractions": fractions, "split": session.split, "num_tasks": len(session.datasets),
                           "tasks": {}}
    for t, dataset in enumerate(tqdm(session.datasets, desc="tasks", disable=not progress, unit="task")):
        factors = factorize_task(session.tasks, t, progress=progress)
        session.cache(dataset)  # its images are preprocessed once for all fractions
        top1s = []
        for f in tqdm(fractions, desc=f"{dataset} fractions", disable=not progress, leave=False, unit="fraction"):
            session.set_weights(factors.truncated(f))
            top1s.append(session.top1(dataset, f"f={f:g}"))
        session.set_weights(factors.full())
        finetuned = session.top1(dataset, "fine-tuned")
        zeroshot = None
        if include_zeroshot:
            session.weights.reset()
            zeroshot = session.top1(dataset, "zero-shot")
        mean_rank = [factors.mean_ranks(f) for f in fractions]
        del factors
        session.release(dataset)
        out["tasks"][dataset] = {
            "top1": top1s,
            "normalized_top1": [session.normalized(dataset, a) for a in top1s],
            "mean_rank": mean_rank,
            "finetuned_top1": finetuned,
            "finetuned_normalized_top1": session.normalized(dataset, finetuned),
            "published_finetuned_top1": session.ft_accuracies.get(session.split_name(dataset)),
            "zeroshot_top1": zeroshot,
        }
    session.weights.reset()
    return out

