"""Where the published checkpoints live on disk (SPEC §1), and atomic file writing.

The layout is fixed by the authors' published experiments so that users can point ``model_location`` at the
checkpoints they already downloaded; every path the project reads or writes for them is built here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "CHECKPOINT_HELP",
    "CheckpointNotFoundError",
    "OutputPathError",
    "atomic_write",
    "check_output_path",
    "dataset_base_name",
    "find_zeroshot_checkpoint",
    "finetuned_checkpoint_path",
    "head_path",
    "require_file",
    "same_file",
    "naming_destination",
    "temporary_sibling",
    "single_task_accuracy_path",
    "tall_mask_paths",
    "zeroshot_checkpoint_path",
]

PathLike = str | os.PathLike[str]

CHECKPOINT_HELP = """\
How to obtain the checkpoints:
  * Download the published ones (ViT-B-32, ViT-B-16, ViT-L-14) from the Hugging Face hub repository
    `nik-dim/tall_masks` (folders `single_task/<model>/<Dataset>Val/...`) straight into this layout:
      tsvmerge download checkpoints --model ViT-B-32 --tasks 8 --to <model_location>
    (model_location defaults to `models/checkpoints`; --tasks 8|14|20 or --datasets A B ...; the zero-shot
    heads come with them, and --masks adds the saved TALL masks of `tall_masks/<model>/`). Then
    `tsvmerge doctor model=<model> num_tasks=<T>` lists whatever a run still lacks (docs/checkpoints.md).
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


def temporary_sibling(dest: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name next to ``dest`` (same file system, so renaming it onto ``dest`` is atomic)."""
    return dest.parent / f".{dest.name}.{secrets.token_hex(6)}.{kind}"


def naming_destination(error: OSError, temporary: Path, dest: Path) -> OSError:
    """``error`` naming ``dest`` where it named the temporary file or folder (or nothing): users only ever see the
    path they asked for."""
    name = error.filename
    if name is not None and not str(name).startswith(str(temporary)):
        return error
    shown = str(dest) if name is None else str(dest) + str(name)[len(str(temporary)):]
    return OSError(error.errno, error.strerror or str(error), shown)


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Create ``path`` through ``write(tmp_path)`` so that readers never see a partial file.

    ``write`` writes the complete file at ``tmp_path``, a fresh temporary name in the destination directory (same
    file system, so the final ``os.replace`` is atomic); the file is then fsynced and renamed over ``path``. On
    any error or interruption (KeyboardInterrupt, SIGTERM raised as an exception) the temporary file is removed.
    Parent directories are created. OSErrors name ``path``, not the temporary file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    try:
        # Not tempfile.mkstemp: its 0600 mode would end up on the final file; O_EXCL with 0666 honours the umask.
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as error:
        _remove_quietly(tmp)
        raise naming_destination(error, tmp, dest) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_directory(dest.parent)
    return dest


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable where the platform allows it."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ----------------------------------------------------------------------------------------- output path checks
class OutputPathError(ValueError):
    """An output path that cannot be written, or whose writing would overwrite an input; found before any work."""


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once links are resolved, or hard links of each other."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _probe_writable(directory: Path, label: str, dest: Path) -> None:
    """Create and delete a file in ``directory``: the only reliable check (permissions, read-only mounts, root)."""
    probe = temporary_sibling(directory / "probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as error:
        raise OutputPathError(f"{label} {str(dest)!r} cannot be written: creating a file in {str(directory)!r} "
                              f"fails ({error.strerror or error}); choose another location") from None
    finally:
        _remove_quietly(probe)


def check_output_path(path: PathLike, *, label: str = "output", inputs: Sequence[PathLike] = (),
                      folder: bool = False) -> Path:
    """Check, before any work starts, that ``path`` can be written without harming an input.

    ``path`` must not be one of ``inputs`` (also through a symbolic or hard link), must be a file path (a folder
    path when ``folder``) and its directory must be writable, or creatable in a writable one. No input may lie
    inside an output folder. Whether an existing folder may be written is the business of
    :func:`tsvmerge.checkpoints.output_folders.check_output_folder`. Missing directories are not created here.
    Raises OutputPathError naming ``label`` and the path.
    """
    dest = Path(path)
    shown = f"{label} {str(dest)!r}"
    for item in map(Path, inputs):
        if same_file(dest, item):
            raise OutputPathError(f"{shown} is the input {str(item)!r}; writing it would overwrite that input. "
                                  "Choose another output path.")
        if folder and dest.resolve() in item.resolve().parents:
            raise OutputPathError(f"{shown} holds the input {str(item)!r}, which writing the folder could "
                                  "overwrite or delete. Choose another output folder.")
    if dest.is_dir() and not folder:
        raise OutputPathError(f"{shown} is an existing directory; give a file path.")
    if dest.exists() and folder and not dest.is_dir():
        raise OutputPathError(f"{shown} is an existing file; this output is a folder. Give a folder path.")
    parent = _nearest_existing(dest.parent)
    if not parent.is_dir():
        raise OutputPathError(f"{shown} cannot be written: {str(parent)!r} is a file, not a directory.")
    _probe_writable(parent, label, dest)
    if folder and dest.is_dir():
        _probe_writable(dest, label, dest)
    return dest
