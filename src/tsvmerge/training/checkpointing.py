"""Fine-tuning output in the published layout (SPEC §1), written atomically by rank 0 only.

``<model_location>/<model>/<Dataset>Val/``:

- ``nonlinear_zeroshot.pt``: the image encoder before training (identical for every task);
- ``nonlinear_finetuned.pt``: after training; its presence marks the task as done (re-runs skip it);
- ``checkpoint_<step>.pt``: intermediate encoders (``--checkpoint-every``).

All are state dicts with the published keys (``model.visual.*``, ``model.token_embedding.weight``, ...), written
through :func:`tsvmerge.checkpoints.save_state_dict` (temporary file, fsync, rename): a crash never leaves a
half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..checkpoints.paths import find_zeroshot_checkpoint, finetuned_checkpoint_path, zeroshot_checkpoint_path
from ..checkpoints.state_dict import save_state_dict

__all__ = [
    "initial_weights_file",
    "intermediate_checkpoint_path",
    "remove_stale_temporary_files",
    "save_encoder",
    "task_directory",
]

log = logging.getLogger(__name__)


def task_directory(model_location: str | Path, model: str, dataset: str) -> Path:
    """``<model_location>/<model>/<Dataset>Val``."""
    return finetuned_checkpoint_path(model_location, model, dataset).parent


def intermediate_checkpoint_path(model_location: str | Path, model: str, dataset: str, step: int) -> Path:
    """``<model_location>/<model>/<Dataset>Val/checkpoint_<step>.pt`` (``--checkpoint-every``)."""
    return task_directory(model_location, model, dataset) / f"checkpoint_{int(step)}.pt"


def initial_weights_file(model_location: str | Path, model: str, dataset: str) -> Path | None:
    """An existing zero-shot checkpoint to start from: the task's own, else ``MNISTVal``'s (all are identical);
    None when there is none (the weights then come from ``model.pretrained``)."""
    for path in (zeroshot_checkpoint_path(model_location, model, dataset),
                 find_zeroshot_checkpoint(model_location, model)):
        if path.is_file():
            return path
    return None


def save_encoder(encoder: torch.nn.Module, path: str | Path) -> Path:
    """Write the encoder's state dict (published keys) atomically; tensors are copied to the CPU."""
    return save_state_dict(encoder.state_dict(), path)


def remove_stale_temporary_files(folder: Path) -> None:
    """Delete temporary files a killed run may have left beside the checkpoints (``.<name>.<hex>.tmp``)."""
    if not folder.is_dir():
        return
    for tmp in folder.glob(".*.pt.*.tmp"):
        log.warning("removing %s, left by an interrupted run", tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()
