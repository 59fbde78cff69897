"""Writing files safely, whatever they hold: atomic writes, JSON, and output paths checked before any work.

A file is written under a fresh temporary name beside it and renamed over the destination, so readers never see
a partial file and an interruption leaves nothing behind; every command's results, checkpoints and reports go
through :func:`atomic_write`. :func:`check_output_path` runs before a command starts its work, so that a bad
output path is reported at once, not after hours of merging or training.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "OutputPathError",
    "PathLike",
    "atomic_write",
    "check_output_path",
    "fsync_directory",
    "json_safe",
    "naming_destination",
    "same_file",
    "temporary_sibling",
    "write_json",
    "replace_between_markers",
]

PathLike = str | os.PathLike[str]


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
    fsync_directory(dest.parent)
    return dest


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable where the platform allows it."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def json_safe(value: Any) -> Any:
    """Tensors, numpy scalars / arrays, Paths, tuples and non-finite floats made JSON-serializable."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON through a temporary file and a rename (never half-written)."""
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    return atomic_write(path, write)


class OutputPathError(UserError, ValueError):
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


def replace_between_markers(path: Path, start: str, end: str, block: str) -> bool:
    """Rewrite the text between the ``start`` and ``end`` marker lines of ``path`` with ``block`` (the generated
    tables of the README and docs); True when the file changed."""
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{block}\n{end}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
