"""The single-task accuracy files (``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json``, the
denominators of main.py's normalized accuracy, and ``zeroshot_accuracies.json``): where they are, and how new entries
are merged into them without losing those of concurrent jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from ..checkpoints.paths import single_task_accuracy_path
from ..utils.file_lock import locked
from ..utils.files import write_json

__all__ = ["FINETUNING_MODES", "FinetuningMode", "accuracy_file", "record_accuracies"]

log = logging.getLogger(__name__)

FinetuningMode = Literal["none", "standard"]
FINETUNING_MODES: tuple[str, ...] = ("none", "standard")


def accuracy_file(results_dir: str | Path, model: str, mode: FinetuningMode) -> Path:
    """``nonlinear_ft_accuracies.json`` (standard) or ``zeroshot_accuracies.json`` (none)."""
    path = single_task_accuracy_path(results_dir, model)
    return path if mode == "standard" else path.with_name("zeroshot_accuracies.json")


def _read_existing(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s is not valid JSON; it will be replaced", path)
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def record_accuracies(path: str | Path, accuracies: dict[str, float]) -> Path:
    """Merge ``accuracies`` (``{"MNIST": top1, "MNISTVal": top1}``) into the accuracy file at ``path``, keeping its
    other entries; the file is rewritten atomically, under a lock so that concurrent jobs (one per task on a
    cluster) never drop each other's entries."""
    path = Path(path)
    with locked(path):
        return write_json(path, {**_read_existing(path), **accuracies})
