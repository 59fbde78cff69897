"""The calibration pass of data-aware merges: each task's fine-tuned model run on its own samples, one model in
memory at a time, forward hooks turning the inputs of its linear maps into the statistics the method declared.

:mod:`.capture` finds the linear maps of a torch module and hooks their inputs (padding rows left out);
:mod:`.passes` runs the tasks and hands the statistics to the method; :mod:`.samples` draws each task's samples
from its dataset or reads them from a calibration file; :mod:`.clip` and :mod:`.hf` run CLIP image encoders and
Hugging Face language models.
"""

from __future__ import annotations

from .capture import InputCapture, linear_inputs
from .passes import Batch, CalibrationRecord, calibrate

__all__ = ["Batch", "CalibrationRecord", "InputCapture", "calibrate", "linear_inputs"]
