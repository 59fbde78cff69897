"""The data a result's numbers used, in words: a method that chose α on labelled validation splits, or merged with
unlabeled samples of each task, is not comparable to a data-free one without saying so.

The words, from :func:`data_regime`:

- ``none``: nothing chosen on data (a fixed α or ``specify_lambda``, zero-shot, TSV-C);
- ``validation (α)``: α chosen on the labelled validation splits (more than one α evaluated);
- ``validation (λ per task)``: each task's mask choice chosen on its own validation split (more than one choice);
- ``<N> unlabeled/task``: a data-aware merge with N calibration samples per task (e.g. RegMean), joined with
  `` + `` to the validation parts it also used (ESM: ``256 unlabeled/task + validation (α)``).
"""

from __future__ import annotations

from .results import ResultFile

__all__ = ["NO_DATA", "VALIDATION_ALPHA", "VALIDATION_PER_TASK", "data_regime", "regime_of"]

NO_DATA = "none"
VALIDATION_ALPHA = "validation (α)"
VALIDATION_PER_TASK = "validation (λ per task)"


def data_regime(calibration_samples: int | None, alphas_evaluated: int, mask_choices: int = 0) -> str:
    """The regime of a run that merged with ``calibration_samples`` unlabeled samples per task (None: no data-aware
    merge), evaluated ``alphas_evaluated`` α values on validation and chose each task's mask among ``mask_choices``
    on validation (0: not task-specific). A single α or a single choice is fixed, not chosen on data."""
    if calibration_samples is not None and calibration_samples < 1:
        raise ValueError(f"calibration_samples must be at least 1 (or None), got {calibration_samples}")
    if alphas_evaluated < 0 or mask_choices < 0:
        raise ValueError(f"counts cannot be negative, got alphas_evaluated={alphas_evaluated}, "
                         f"mask_choices={mask_choices}")
    parts = [] if calibration_samples is None else [f"{calibration_samples} unlabeled/task"]
    if alphas_evaluated > 1:
        parts.append(VALIDATION_ALPHA)
    if mask_choices > 1:
        parts.append(VALIDATION_PER_TASK)
    return " + ".join(parts) or NO_DATA


def regime_of(result: ResultFile) -> str:
    """The regime stored in ``result``, or, for files written before it was stored, the one its selection implies:
    files of that time hold no data-aware method, and a task-specific file's ``val`` has one section per mask
    choice."""
    if result.data_regime:
        return result.data_regime
    mask_choices = len(result.val) if result.task_choices is not None else 0
    return data_regime(None, len(result.alpha_grid), mask_choices)
