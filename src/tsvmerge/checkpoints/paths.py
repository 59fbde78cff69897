"""Where the published checkpoints live on disk (SPEC §1), and atomic file writing.

The layout is fixed by the authors' published experiments so that users can point ``model_location`` at the
checkpoints they already downloaded; every path the project reads or writes for them is built here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "CHECKPOINT_HELP",
    "CheckpointNotFoundError",
    "atomic_write",
    "dataset_base_name",
    "find_zeroshot_checkpoint",
    "finetuned_checkpoint_path",
    "head_path",
    "require_file",
    "single_task_accuracy_path",
    "tall_mask_paths",
    "zeroshot_checkpoint_path",
]

PathLike = str | os.PathLike[str]

CHECKPOINT_HELP = """\
How to obtain the checkpoints:
  * Download the published ones from the Hugging Face hub repository `nik-dim/tall_masks` (folders
    `single_task/<model>/<Dataset>Val/...`), e.g.
      huggingface-cli download nik-dim/tall_masks --include "single_task/ViT-B-32/*" --local-dir <dir>
    and place `<dir>/single_task/<model>` at `<model_location>/<model>` (model_location defaults to
    `models/checkpoints`). Saved TALL masks are in the same repository under `tall_masks/<model>/`,
    and the zero-shot heads beside the checkpoints (`<model_location>/<model>/head_<Dataset>Val.pt`).
  * Or try the whole pipeline offline on a tiny CLIP and synthetic tasks: `make demo` (`model=demo`)."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint file the run needs is absent; the message says how to get it."""


def require_file(path: PathLike, what: str = "checkpoint") -> Path:
    """Return ``path`` as a Path, or raise CheckpointNotFoundError naming it and how to obtain checkpoints."""
    p = Path(path)
    if not p.is_file():
        reason = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"{what} {str(p)!r} {reason}.\n{CHECKPOINT_HELP}")
    return p


def _check_component(value: str, what: str) -> str:
    # A model or dataset name becomes one path component; refuse anything that would escape it.
    if not value or value in (".", "..") or "/" in value or os.sep in value:
        raise ValueError(f"invalid {what} name {value!r}: it must be a single path component")
    return value


def dataset_base_name(dataset: str) -> str:
    """``"MNISTVal"`` -> ``"MNIST"``; names are accepted with or without the validation suffix."""
    _check_component(dataset, "dataset")
    base = dataset[: -len("Val")] if dataset.endswith("Val") else dataset
    if not base:
        raise ValueError(f"invalid dataset name {dataset!r}")
    return base


def finetuned_checkpoint_path(model_location: PathLike, model: str, dataset: str) -> Path:
    """``<model_location>/<model>/<dataset>Val/nonlinear_finetuned.pt``."""
    return (
        Path(model_location)
        / _check_component(model, "model")
        / f"{dataset_base_name(dataset)}Val"
        / "nonlinear_finetuned.pt"
    )


def zeroshot_checkpoint_path(model_location: PathLike, model: str, dataset: str = "MNIST") -> Path:
    """``<model_location>/<model>/<dataset>Val/nonlinear_zeroshot.pt`` (every task's copy is identical)."""
    return (
        Path(model_location)
        / _check_component(model, "model")
        / f"{dataset_base_name(dataset)}Val"
        / "nonlinear_zeroshot.pt"
    )


def find_zeroshot_checkpoint(model_location: PathLike, model: str, datasets: Sequence[str] = ()) -> Path:
    """The zero-shot checkpoint a run uses: ``MNISTVal``'s (the published convention), else the first existing one
    of ``datasets`` (models whose tasks exclude MNIST, like the demo). When none exists, the path to report:
    MNIST's when it is one of the tasks (or none are given), else the first task's."""
    names = ["MNIST", *(dataset_base_name(d) for d in datasets)]
    for name in dict.fromkeys(names):
        path = zeroshot_checkpoint_path(model_location, model, name)
        if path.is_file():
            return path
    expected = "MNIST" if not datasets or "MNIST" in names[1:] else names[1]
    return zeroshot_checkpoint_path(model_location, model, expected)


def head_path(model_location: PathLike, model: str, dataset: str) -> Path:
    """``<model_location>/<model>/head_<dataset>Val.pt`` (a pickled ClassificationHead)."""
    return Path(model_location) / _check_component(model, "model") / f"head_{dataset_base_name(dataset)}Val.pt"


def tall_mask_paths(
    model_location: PathLike,
    model: str,
    num_tasks: int,
    use_ties: bool = False,
    ties_agg: str = "sum",
) -> list[Path]:
    """Candidate TALL-mask files, the one to write first.

    As in the published code, every ``checkpoints`` in ``model_location`` becomes ``tall_masks``. The published
    code writes the TIES variant as ``..._use_ties_<agg>.npy`` but reads ``..._use_ties.npy``; both are candidates.
    """
    if int(num_tasks) != num_tasks or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    root = Path(os.fspath(model_location).replace("checkpoints", "tall_masks")) / _check_component(model, "model")
    stem = f"TALL_mask_{int(num_tasks)}task"
    if not use_ties:
        return [root / f"{stem}.npy"]
    return [root / f"{stem}_use_ties_{_check_component(ties_agg, 'ties_agg')}.npy", root / f"{stem}_use_ties.npy"]


def single_task_accuracy_path(results_dir: PathLike, model: str) -> Path:
    """``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json`` (denominators of normalized accuracy)."""
    return Path(results_dir) / "single_task" / _check_component(model, "model") / "nonlinear_ft_accuracies.json"


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Create ``path`` through ``write(tmp_path)`` so that readers never see a partial file.

    ``write`` writes the complete file at ``tmp_path``, a fresh temporary name in the destination directory (same
    file system, so the final ``os.replace`` is atomic); the file is then fsynced and renamed over ``path``. On
    any error the temporary file is removed. Parent directories are created.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would end up on the final file; O_EXCL with 0666 honours the umask.
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return dest
