"""The paper's analyses: Singular Task Interference, spectra (of the task matrices and of each method's merged τMT),
Procrustes error, rank truncation, ablation, α heat-map, compression, and the results report's tables (from the
result files main.py writes). Figures are drawn by :mod:`tsvmerge.plotting`; the commands are
:mod:`tsvmerge.recipes.analyze` (``analyze.py``) and :mod:`tsvmerge.recipes.report` (``report.py``).

The names below are imported on first use, so that light submodules (``params``, read by every entry point's
configuration) do not pull in the plotting and evaluation stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalSession": "common", "open_task_vectors": "common", "tasks_tag": "common",
    "gram_data": "interference", "interference_table": "interference", "sti": "interference",
    "procrustes_table": "procrustes", "layer_spectra": "spectra", "truncation_curves": "truncation",
    "merged_spectra": "merged_spectra",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
