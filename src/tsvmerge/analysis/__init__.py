"""The paper's analyses: Singular Task Interference, spectra, Procrustes error, rank truncation, ablation, α heat-map,
compression, and the results report. Figures are drawn by :mod:`tsvmerge.plotting`; commands in
:mod:`tsvmerge.analysis.commands` (``analyze.py``) and :mod:`tsvmerge.analysis.report` (``report.py``)."""

from .common import EvalSession, Workspace, open_task_vectors, tasks_tag
from .interference import gram_data, interference_table, sti
from .procrustes import procrustes_table
from .spectra import layer_spectra
from .truncation import truncation_curves

__all__ = [
    "EvalSession",
    "Workspace",
    "gram_data",
    "interference_table",
    "layer_spectra",
    "open_task_vectors",
    "procrustes_table",
    "sti",
    "tasks_tag",
    "truncation_curves",
]
