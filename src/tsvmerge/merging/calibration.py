"""What a data-aware merge needs from data, declared by the method, and the statistics it receives.

A data-aware method (ESM, RegMean) looks at the inputs of some linear maps of each task's fine-tuned model θi,
computed on a few samples of that task. The method never sees a model, a dataset or a hook: it declares a
:class:`CalibrationSpec` (which statistic, how many samples of which split), chooses which of the model's linear
maps it needs (:meth:`~tsvmerge.merging.registry.MergeMethod.calibration_keys`), and receives one
:class:`InputStatistic` per task and key, keyed like the state dict, from the calibration pass that runs the models
(:mod:`tsvmerge.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..utils.errors import UserError

__all__ = ["CalibrationError", "CalibrationSpec", "InputStatistic", "Statistic"]

#: ``rows``: every input row of one batch holding all of the task's samples, handed over while the forward pass
#: runs (one module's activations at a time; ESM's PCA of X·ΔWᵀ needs the rows themselves).
#: ``gram``: the mean outer product XᵀX / rows over all batches, accumulated in float64 (RegMean).
Statistic = Literal["rows", "gram"]


class CalibrationError(UserError, ValueError):
    """Calibration inputs that cannot be used (missing, extra or malformed samples; a method that needs none)."""


@dataclass(frozen=True)
class CalibrationSpec:
    """A data-aware method's needs: the statistic of each linear map's input, and its default samples.

    ``samples`` per task are drawn from ``split`` (``validation``: the ``<Dataset>Val`` held-out part;
    ``train``: the training images without it) with ``numpy.random.RandomState(seed)``: ``choice`` without
    replacement (``draw="choice"``, SPEC_ESM E3) or the first ``samples`` of a permutation rounded up to whole
    batches (``draw="permutation"``, SPEC_REGMEAN R3). ``batch_size`` None: all samples in one batch.
    """

    statistic: Statistic
    samples: int
    split: Literal["validation", "train"]
    seed: int = 0
    batch_size: int | None = None
    draw: Literal["choice", "permutation"] = "choice"

    def samples_used(self, available: int, asked: int | None = None) -> int:
        """How many of ``available`` samples a task uses when ``asked`` (None: the method's default) are wanted:
        whole batches for a batched draw, never more than the split holds."""
        n = self.samples if asked is None else asked
        if self.batch_size is not None and self.draw == "permutation":
            n = -(-n // self.batch_size) * self.batch_size
        return min(n, available)


@dataclass
class InputStatistic:
    """One task's statistic of one linear map's input X (rows = every token of every sample).

    ``rows``: X itself [N, n_in] (statistic ``rows``); ``gram``: XᵀX / N in float64 (statistic ``gram``);
    ``count``: N, the number of rows behind it.
    """

    count: int
    rows: Tensor | None = None
    gram: Tensor | None = None
