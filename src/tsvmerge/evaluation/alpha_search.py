"""The α policy of each method and the in-place model update θ0 + α·τ used by the sweep.

The model is built once; for each α (or each task's own vector) its parameters are rewritten in place with
``param.copy_(θ0).add_(τ, alpha=α)`` from a θ0 copy and τ kept on the device, so no checkpoint is read again and
no second model is allocated per α.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..merging.registry import MergeMethod

__all__ = ["EarlyStopping", "InPlaceWeights", "alpha_grid", "alpha_label"]


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
    def set(self, vectors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], alpha: float = 1.0) -> None:
        """Parameters := θ0 + α·τ for the entries of ``vectors``, θ0 elsewhere."""
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
            target.copy_(base).add_(tau.to(target.device, target.dtype, non_blocking=True), alpha=alpha)
            touched.add(key)
        for key in self._dirty - touched:
            self._targets[key].copy_(self._theta0[key])
        self._dirty = touched
        self.updates += 1

    def reset(self) -> None:
        """Back to θ0."""
        self.set({}, 0.0)
