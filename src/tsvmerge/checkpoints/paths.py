"""Where the published checkpoints live on disk (SPEC §1).

The layout is fixed by the authors' published experiments so that users can point ``model_location`` at the
checkpoints they already downloaded; every path the project reads or writes for them is built here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..utils.errors import UserError
from ..utils.files import PathLike

__all__ = [
    "CHECKPOINT_HELP",
    "CheckpointNotFoundError",
    "dataset_base_name",
    "find_zeroshot_checkpoint",
    "finetuned_adapter_path",
    "finetuned_checkpoint_path",
    "finetuned_source_path",
    "head_path",
    "require_file",
    "single_task_accuracy_path",
    "tall_mask_paths",
    "zeroshot_checkpoint_path",
]

CHECKPOINT_HELP = """\
How to obtain the checkpoints:
  * Download the published ones (ViT-B-32, ViT-B-16, ViT-L-14) from the Hugging Face hub repository
    `nik-dim/tall_masks` (folders `single_task/<model>/<Dataset>Val/...`) straight into this layout:
      tsvmerge download checkpoints --model ViT-B-32 --tasks 8 --to <model_location>
    (model_location defaults to `models/checkpoints`; --tasks 8|14|20 or --datasets A B ...; the zero-shot
    heads come with them, and --masks adds the saved TALL masks of `tall_masks/<model>/`). Then
    `tsvmerge doctor model=<model> num_tasks=<T>` lists whatever a run still lacks (docs/checkpoints.md).
  * Or try the whole pipeline offline on a tiny CLIP and synthetic tasks: `make demo` (`model=demo`)."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
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


def finetuned_adapter_path(model_location: PathLike, model: str, dataset: str) -> Path:
    """``<model_location>/<model>/<dataset>Val/adapter``: a PEFT LoRA adapter folder standing for the task's
    fine-tuned checkpoint."""
    return finetuned_checkpoint_path(model_location, model, dataset).parent / "adapter"


def finetuned_source_path(model_location: PathLike, model: str, dataset: str) -> Path:
    """The task's fine-tuned weights: ``nonlinear_finetuned.pt`` when present, else its ``adapter/`` folder when
    that holds an ``adapter_config.json``, else the checkpoint's path (reported missing)."""
    checkpoint = finetuned_checkpoint_path(model_location, model, dataset)
    adapter = finetuned_adapter_path(model_location, model, dataset)
    if not checkpoint.is_file() and (adapter / "adapter_config.json").is_file():
        return adapter
    return checkpoint


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
    ties_agg: str | None = None,
    datasets: Sequence[str] | None = None,
) -> list[Path]:
    """Candidate TALL-mask files, the one to write first; ``ties_agg`` (the TIES aggregation the masks were built
    with) is needed with ``use_ties``.

    As in the published code, every ``checkpoints`` in ``model_location`` becomes ``tall_masks``. The published
    code writes the TIES variant as ``..._use_ties_<agg>.npy`` but reads ``..._use_ties.npy``; both are candidates.
    Masks of an explicit task list (``datasets``, not the first T tasks of a benchmark) are named after the tasks
    too (``TALL_mask_2task_MNIST-Cars.npy``), so that runs on other tasks never share a file.
    """
    if int(num_tasks) != num_tasks or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    root = Path(os.fspath(model_location).replace("checkpoints", "tall_masks")) / _check_component(model, "model")
    stem = f"TALL_mask_{int(num_tasks)}task"
    if datasets is not None:
        joined = "-".join(_check_component(d, "dataset") for d in datasets)
        stem += "_" + (joined if len(joined) <= 80 else "custom" + hashlib.sha1(joined.encode()).hexdigest()[:10])
    if not use_ties:
        return [root / f"{stem}.npy"]
    if ties_agg is None:
        raise ValueError("tall_mask_paths: use_ties=True needs ties_agg, the TIES aggregation the masks were built "
                         "with (their file name ends in _use_ties_<ties_agg>.npy)")
    return [root / f"{stem}_use_ties_{_check_component(ties_agg, 'ties_agg')}.npy", root / f"{stem}_use_ties.npy"]


def single_task_accuracy_path(results_dir: PathLike, model: str) -> Path:
    """``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json`` (denominators of normalized accuracy)."""
    return Path(results_dir) / "single_task" / _check_component(model, "model") / "nonlinear_ft_accuracies.json"
