"""RegMean (SPEC_REGMEAN): each linear map merged by the closed-form least-squares solution over the tasks' inputs.

W* = (Σi Wi G̃i)(Σi G̃i)⁻¹ with G̃i the reduced Gram matrix of task i's inputs to that map. Because Σi G̃i (Σ G̃)⁻¹ = I,
W* = θ0 + (Σi τi G̃i)(Σi G̃i)⁻¹: the task-vector route, accurate where the full-weight route loses digits
(SPEC_REGMEAN R4.3). The sums are accumulated task by task (:class:`RegressionSums`), so memory does not grow with T.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["RegressionSums", "reduce_gram", "regmean_solve"]


def reduce_gram(gram: Tensor, keep_off_diagonal: float) -> Tensor:
    """G̃ = a·G + (1 − a)·Diag(G): ``keep_off_diagonal`` = a is the factor kept on the off-diagonal entries."""
    reduced = gram * keep_off_diagonal
    reduced.diagonal().add_(gram.diagonal(), alpha=1.0 - keep_off_diagonal)
    return reduced


@dataclass
class RegressionSums:
    """S = Σi G̃i ([in, in]) and P = Σi τi G̃i ([out, in]) of one linear map, in float64."""

    gram_sum: Tensor
    product_sum: Tensor
    tasks: list[int] = field(default_factory=list)
    #: Calibration rows behind the sums, and whether any off-diagonal entry was reduced (a < 1): with a = 1 and
    #: fewer rows than inputs S is singular, which round-off may hide from the factorization.
    rows: int = 0
    reduced: bool = False

    @classmethod
    def empty(cls, rows: int, cols: int, device: torch.device | str = "cpu") -> RegressionSums:
        return cls(torch.zeros(cols, cols, dtype=torch.float64, device=device),
                   torch.zeros(rows, cols, dtype=torch.float64, device=device))

    def add(self, task: int, delta: Tensor, gram: Tensor, keep_off_diagonal: float, rows: int = 0) -> None:
        """Fold in one task: its task vector τi ([out, in]) and the mean Gram XᵀX / N of its ``rows`` inputs."""
        self.rows += rows
        self.reduced = self.reduced or keep_off_diagonal < 1.0
        reduced = reduce_gram(gram.to(self.gram_sum.device, torch.float64), keep_off_diagonal)
        self.gram_sum += reduced
        self.product_sum.addmm_(delta.to(self.product_sum.device, torch.float64), reduced)
        self.tasks.append(task)


def regmean_solve(sums: RegressionSums, key: str = "") -> Tensor:
    """τ* = P S⁻¹ in float64 (Cholesky of S, symmetric positive definite whenever it is invertible); an exactly
    singular S — an input feature that is 0 in every row of every task — is an error naming the entry."""
    size = sums.gram_sum.shape[0]
    too_few_rows = not sums.reduced and 0 < sums.rows < size
    factor, info = torch.linalg.cholesky_ex(sums.gram_sum)
    if int(info) != 0 or too_few_rows or not bool((sums.gram_sum.diagonal() > 0).all()):
        raise ValueError(f"RegMean: the summed Gram matrix of {key or 'an entry'} is singular (an input feature is "
                         "0 in every calibration row of every task); use more or other calibration samples")
    return torch.cholesky_solve(sums.product_sum.mT, factor).mT
