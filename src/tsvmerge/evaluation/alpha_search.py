"""The α policy of each method (a grid, or ESM's golden-section search) and the in-place model update θ0 + α·τ used
by the sweep.

The model is built once; for each α (or each task's own vector) its parameters are rewritten in place with
``param.copy_(θ0).add_(τ, alpha=α)`` from a θ0 copy and τ kept on the device, so no checkpoint is read again and
no second model is allocated per α.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..merging.registry import MergeMethod
from .metrics import first_best

__all__ = ["EarlyStopping", "GoldenSectionResult", "InPlaceWeights", "alpha_grid", "alpha_label",
           "golden_section_search"]


def alpha_grid(method: MergeMethod, n_eval_points: int, specify_lambda: float | None = None) -> list[float]:
    """The α values tried on validation (SPEC §3/§4).

    Grid methods: ``linspace(0, alpha_grid_max, n_eval_points)[1:]``, or ``[specify_lambda]`` when given.
    Fixed-α methods (zeroshot, average, mask methods, TSV-C): ``[default_alpha]`` (``specify_lambda`` does not
    apply to them).
    """
    if method.alpha_grid_max is None:
        return [float(method.default_alpha)]
    if specify_lambda is not None:
        return [float(specify_lambda)]
    if n_eval_points < 2:
        raise ValueError(f"n_eval_points must be at least 2 (the grid drops α=0), got {n_eval_points}")
    return [float(a) for a in np.linspace(0.0, method.alpha_grid_max, n_eval_points)[1:]]


class EarlyStopping:
    """The Iso methods' sweep rule (SPEC_BEYOND §B2): after each α, a score not strictly above the best so far
    counts one, a better one resets the count; at ``patience`` the sweep stops (None: never).

    The score is the validation mean *absolute* top-1, as the authors wrote it; α is then chosen among the values
    evaluated by the usual rule (first maximum of the mean normalized top-1).
    """

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self._best = -math.inf
        self._without_gain = 0

    def update(self, score: float) -> bool:
        """Record one α's score; True when the sweep must stop."""
        if score > self._best:
            self._best, self._without_gain = score, 0
        else:
            self._without_gain += 1
        return self.patience is not None and self._without_gain >= self.patience


#: The golden ratio's conjugate (√5 − 1)/2: each step keeps this fraction of the bracket.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class GoldenSectionResult:
    """The α values a golden-section search evaluated, their two scores, and the α it chose."""

    points: list[float]  # α values in evaluation order (14 for the defaults)
    search_scores: list[float]  # f at each point: the metric that steers the search
    choice_scores: list[float]  # g at each point: the metric that picks the result
    chosen: float  # the first strict maximum of g over ``points``, in evaluation order


def golden_section_search(evaluate: Callable[[float], tuple[float, float]], a: float = 0.0, b: float = 2.0,
                          tol: float = 0.01, max_iter: int = 15) -> GoldenSectionResult:
    """ESM's α rule (SPEC_ESM §E7), as the authors' search runs it rather than a grid: ``evaluate(α)`` returns
    (f, g) = (mean absolute, mean normalized validation top-1).

    The bracket [a, b] shrinks on f: c = b − r(b − a), d = a + r(b − a), r = (√5 − 1)/2; when f(c) > f(d)
    (strict) it keeps [a, d], otherwise (ties included, so ties move right) [c, b]; it stops once |b − a| < ``tol``
    or after ``max_iter`` steps. The point kept inside the new bracket reuses its value, so no α is evaluated twice
    (14 evaluations with the defaults). The result is chosen on g among every evaluated α, as the authors choose it.
    """
    if not b > a:
        raise ValueError(f"the search bracket needs a < b, got a={a:g}, b={b:g}")
    points: list[float] = []
    scores: list[tuple[float, float]] = []

    def score(alpha: float) -> float:
        f, g = evaluate(alpha)
        points.append(alpha)
        scores.append((float(f), float(g)))
        return float(f)

    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = score(c), score(d)
    for _ in range(max_iter):
        if abs(b - a) < tol:
            break
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = score(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = score(d)
    choice = [g for _, g in scores]
    return GoldenSectionResult(points, [f for f, _ in scores], choice, points[first_best(choice)])


def alpha_label(alpha: float) -> str:
    """JSON key of an α: its shortest round-trip repr after rounding grid noise (0.30000000000000004 -> '0.3')."""
    return repr(round(float(alpha), 10))


class InPlaceWeights:
    """Rewrites a module's own parameter / buffer tensors as θ0 + α·τ, keeping θ0 once on their device.

    θ0 is the module's content when this object is created. Entries a previous call changed and the current one
    does not are restored to θ0, so a sequence of task-specific vectors never leaks between tasks.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self._targets: dict[str, Tensor] = dict(module.state_dict(keep_vars=True))
        self._theta0: dict[str, Tensor] = {}
        self._dirty: set[str] = set()
        self.updates = 0

    def keys(self) -> set[str]:
        return set(self._targets)

    @torch.no_grad()
    def set(self, vectors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], alpha: float = 1.0, *,
            unscaled: Collection[str] = ()) -> None:
        """Parameters := θ0 + α·τ for the entries of ``vectors``, θ0 elsewhere; θ0 + τ for the ``unscaled`` entries
        (a method whose α multiplies only part of τMT: ESM)."""
        items = vectors.items() if isinstance(vectors, Mapping) else vectors
        touched: set[str] = set()
        for key, tau in items:
            target = self._targets.get(key)
            if target is None:
                raise KeyError(f"task-vector entry {key!r} is not a weight of the evaluated model")
            if tuple(tau.shape) != tuple(target.shape):
                raise ValueError(f"task-vector entry {key!r} has shape {tuple(tau.shape)}, "
                                 f"the model {tuple(target.shape)}")
            base = self._theta0.get(key)
            if base is None:
                base = self._theta0[key] = target.detach().clone()
            coefficient = 1.0 if key in unscaled else alpha
            target.copy_(base).add_(tau.to(target.device, target.dtype, non_blocking=True), alpha=coefficient)
            touched.add(key)
        for key in self._dirty - touched:
            self._targets[key].copy_(self._theta0[key])
        self._dirty = touched
        self.updates += 1

    def reset(self) -> None:
        """Back to θ0."""
        self.set({}, 0.0)
