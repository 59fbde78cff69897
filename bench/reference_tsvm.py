"""The plain TSV-M of the benchmarks: the algorithm as SPEC.md §3 states it, as its authors run it, beside ours.

For each matrix: a full thin SVD of every task matrix as stored (wide ones too), the top k = ⌊min(m, n)/T⌋ of each
placed in zero-initialized [m, min(m, n)] / [min(m, n), n] concatenations, then one SVD of each concatenation for the
Procrustes factors. In float32 it is the speed baseline; in float64 it is the definition every result's error is
measured against. It is written here, on purpose, and shares no code with the package.

The accuracy contract the benchmarks check, per matrix: our relative Frobenius error against the float64 definition is
at most twice the float32 baseline's, or at most 1e-4 where the baseline's is below 5e-5.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor


def plain_tsvm(deltas: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """TSV-M of one matrix entry from its task stack ``deltas`` [T, m, n], computed in ``dtype``."""
    num_tasks = deltas.shape[0]
    sum_u = sum_s = sum_v = None
    for i in range(num_tasks):
        u, s, vh = torch.linalg.svd(deltas[i].to(dtype), full_matrices=False)
        if sum_u is None:
            sum_u, sum_s, sum_v = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
        k = s.shape[0] // num_tasks
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_v[i * k:(i + 1) * k, :] = vh[:k, :]
    u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_v, _, vh_v = torch.linalg.svd(sum_v, full_matrices=False)
    return torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_v, vh_v))


def relative_error(value: Tensor, reference: Tensor) -> float:
    """‖value − reference‖_F / ‖reference‖_F, in float64."""
    reference = reference.to(torch.float64)
    return float(torch.linalg.norm(value.to(torch.float64) - reference) / torch.linalg.norm(reference))


def with_threads(threads: int, fn: Callable[[str], Tensor]) -> Callable[[str], Tensor]:
    """``fn`` run with ``threads`` BLAS threads: LAPACK's float32 results near a noise-floor cut depend on the thread
    count, so our merged entries are computed with the threads the merge gives each entry."""
    def run(key: str) -> Tensor:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn(key)
        finally:
            torch.set_num_threads(saved)
    return run


def within_contract(ours: float, plain: float) -> bool:
    """Our error is at most twice the float32 baseline's (at most 1e-4 where that one is below 5e-5)."""
    return ours <= 2 * plain or (plain < 5e-5 and ours <= 1e-4)


@dataclass
class Comparison:
    """The float32 baseline's merge time and, per matrix, both errors against the float64 definition."""

    plain_seconds: float = 0.0
    rows: list[tuple[str, tuple[int, ...], float, float]] = field(default_factory=list)

    @property
    def worst_ratio(self) -> float:
        return max((ours / plain if plain else float("inf") for _, _, ours, plain in self.rows), default=0.0)

    @property
    def failures(self) -> list[tuple[str, tuple[int, ...], float, float]]:
        return [row for row in self.rows if not within_contract(row[2], row[3])]

    def summary(self) -> str:
        ours = [row[2] for row in self.rows]
        plain = [row[3] for row in self.rows]
        failed = self.failures
        verdict = "every matrix within the contract" if not failed else f"{len(failed)} matrices OUTSIDE the contract"
        return (f"{len(self.rows)} matrices: error vs float64 definition, ours max {max(ours):.2e} "
                f"(median {sorted(ours)[len(ours) // 2]:.2e}), plain float32 max {max(plain):.2e} "
                f"(median {sorted(plain)[len(plain) // 2]:.2e}); worst ours/plain {self.worst_ratio:.2f}; {verdict}")


def compare(entries: Iterable[tuple[str, Callable[[], Tensor]]], ours: Callable[[str], Tensor],
            *, accuracy: Callable[[str], bool] = lambda key: True, progress: Callable[[str], None] | None = None,
            ) -> Comparison:
    """Time the float32 baseline on every ``(key, deltas())`` entry (with torch's threads, reading excluded) and,
    for the entries ``accuracy`` selects, measure it and ``ours(key)`` (our merged entry, computed as the package
    computes it) against the float64 definition."""
    result = Comparison()
    for key, deltas in entries:
        stack = deltas()
        started = time.perf_counter()
        plain = plain_tsvm(stack)
        result.plain_seconds += time.perf_counter() - started
        if accuracy(key):
            merged = ours(key)
            definition = plain_tsvm(stack, torch.float64)
            result.rows.append((key, tuple(stack.shape[1:]), relative_error(merged, definition),
                                relative_error(plain, definition)))
        if progress is not None:
            progress(key)
    return result
