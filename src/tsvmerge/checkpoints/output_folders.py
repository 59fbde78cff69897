"""Output folders that tsvmerge owns: a manifest of what it wrote, and never a file it did not write removed.

Every folder a merge writes (``--out`` of a model-folder merge, each ``task<i>/`` of a task-specific one, the
``task<i>.pt`` folder of a task-specific state-dict merge) carries ``tsvmerge_manifest.json``: the files written,
the command and the identities of the inputs. An existing output folder is then treated by that record alone:

* absent or empty: the new folder is built beside it and renamed into place (complete or absent);
* carrying a manifest and nothing else: replaced as a whole, atomically; the old folder's listed files are removed;
* carrying a manifest plus files tsvmerge did not write: only the listed files are replaced or removed, the
  others stay byte for byte (a planned file that would overwrite one of them is refused before any work);
* anything else that is not empty (another model, a user's folder): refused before any work.

The folder is built in a hidden temporary sibling (``.<name>.<hex>.tmp``) whose own manifest names the folder it
is for, the files it plans and the process writing it, so that a run killed mid-write (SIGKILL, power loss) leaves
something a later run to the same ``--out`` recognizes, removes file by file and reports, and that ``tsvmerge
doctor`` lists.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsvmerge.utils.files import (
    OutputPathError,
    atomic_write,
    fsync_directory,
    naming_destination,
    temporary_sibling,
)

__all__ = [
    "MANIFEST_NAME",
    "OutputRecord",
    "StaleTemporary",
    "check_output_folder",
    "find_stale_temporaries",
    "input_identity",
    "owned_directory",
    "read_manifest",
    "remove_stale_temporaries",
]

MANIFEST_NAME = "tsvmerge_manifest.json"
_FORMAT = 1
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.(?P<kind>tmp|old)")


@dataclass(frozen=True)
class OutputRecord:
    """What a manifest says besides the files: the command that wrote the folder and what it read."""

    command: Sequence[str] = ()
    inputs: Sequence[Mapping[str, Any]] = ()
    tool: str = "tsvmerge"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def manifest(self, files: Iterable[str], **more: Any) -> dict[str, Any]:
        return {"written_by": self.tool, "format": _FORMAT,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": list(self.command), "inputs": [dict(item) for item in self.inputs], **self.extra,
                **more, "files": sorted(files)}


def input_identity(argument: str, path: Path) -> dict[str, Any]:
    """How a manifest names an input: as given, where it was read, its size and last change (a folder: of its
    files), so that a reader can tell whether the merge's inputs are still the ones it read."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    stats = [p.stat() for p in files]
    latest = max((s.st_mtime for s in stats), default=0.0)
    return {"argument": argument, "path": str(path.resolve()), "bytes": sum(s.st_size for s in stats),
            "modified": datetime.datetime.fromtimestamp(latest, datetime.timezone.utc).isoformat(timespec="seconds")}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` when it holds one tsvmerge wrote (files listed as relative paths inside it)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "tsvmerge" or not isinstance(data.get("files"), list):
        return None
    files = data["files"]
    if not all(isinstance(f, str) and _is_inside(f) for f in files):
        return None
    return data


def _is_inside(relative: str) -> bool:
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


def _files_below(folder: Path) -> list[str]:
    """Every file (or link) below ``folder`` as a relative POSIX path; directories only through their files."""
    found = []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in names]
        found += [(base / name).as_posix() for name in dirs if (Path(root) / name).is_symlink()]
    return sorted(found)


def _empty_directories_below(folder: Path) -> list[str]:
    return sorted(Path(root).relative_to(folder).as_posix() for root, dirs, names in os.walk(folder)
                  if not dirs and not names and Path(root) != folder)


def _owned(folder: Path) -> set[str] | None:
    """The files of ``folder`` its manifest lists (manifests included), or None without a manifest."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    return {*manifest["files"], MANIFEST_NAME}


def _foreign(folder: Path, owned: set[str]) -> list[str]:
    return [name for name in _files_below(folder) if name not in owned]


def _listing(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_folder(dest: Path, *, label: str = "--out", may_write: Callable[[str], bool]) -> None:
    """Refuse, before any work, an existing folder that writing ``dest`` could harm.

    ``may_write(relative path)`` tells whether the merge may write a file of that name. A non-empty folder
    without a tsvmerge manifest is refused (it may be another model, or the user's); one with a manifest is
    refused only when a file it does not list has a name the merge may write (it would be overwritten).
    """
    if not dest.is_dir():
        return
    present = _files_below(dest)
    if not present:
        return
    owned = _owned(dest)
    shown = f"{label} {str(dest)!r}"
    if owned is None:
        raise OutputPathError(f"{shown} exists and was not written by tsvmerge (it holds {_listing(present)}); "
                              f"tsvmerge only replaces folders it wrote (they carry {MANIFEST_NAME}). Choose a new "
                              "folder, or move that one away.")
    clashes = [name for name in _foreign(dest, owned) if may_write(name)]
    if clashes:
        raise OutputPathError(f"{shown} holds files tsvmerge did not write that the merge would overwrite "
                              f"({_listing(clashes)}); move them away or choose another folder.")


# --------------------------------------------------------------------------------------------- stale temporaries

@dataclass(frozen=True)
class StaleTemporary:
    """A temporary or set-aside folder of a run that did not finish, and whether it can be removed now."""

    path: Path
    destination: Path
    pid: int | None
    host: str | None
    running: bool

    def describe(self) -> str:
        who = f"process {self.pid} on {self.host}" if self.pid is not None else "an earlier run"
        state = "still running" if self.running else "interrupted"
        return f"{self.path} (for {self.destination}, written by {who}, {state})"


def _process_running(pid: int | None, host: str | None) -> bool:
    """Whether the writer may still be at work: its process is alive here, or it ran on another machine."""
    if pid is None:
        return False
    if host is not None and host != socket.gethostname():
        return True  # cannot tell: never touch another machine's run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporaries_in(directory: Path) -> Iterator[StaleTemporary]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        manifest = read_manifest(entry)
        if manifest is None:
            continue
        target = manifest.get("temporary_for")
        destination = Path(target) if isinstance(target, str) else directory / match["name"]
        pid = manifest.get("pid") if match["kind"] == "tmp" and isinstance(manifest.get("pid"), int) else None
        host = manifest.get("host") if isinstance(manifest.get("host"), str) else None
        yield StaleTemporary(entry, destination, pid, host, _process_running(pid, host))


def find_stale_temporaries(directories: Iterable[Path]) -> list[StaleTemporary]:
    """Temporary folders tsvmerge left in ``directories`` (not recursive): its own, by their manifests."""
    return [found for directory in directories for found in _temporaries_in(Path(directory))]


def stale_temporaries_of(dest: Path) -> list[StaleTemporary]:
    """The leftovers of earlier runs writing ``dest``."""
    target = dest.absolute()
    return [t for t in _temporaries_in(target.parent)
            if t.destination.absolute() == target or t.destination.resolve() == dest.resolve()]


def remove_owned_files(folder: Path) -> list[str]:
    """Remove the files ``folder``'s manifest lists, the manifest, then the directories left empty; returns what
    stays (files tsvmerge did not write, which are never removed)."""
    owned = _owned(folder)
    if owned is None:
        return _files_below(folder)
    for name in sorted(owned - {MANIFEST_NAME}):
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    # Sub-folders' manifests are listed too; the top one goes last, so an interruption leaves the folder claimable.
    with contextlib.suppress(FileNotFoundError):
        (folder / MANIFEST_NAME).unlink()
    remaining = _files_below(folder)
    _remove_empty_directories(folder)
    return remaining


def _remove_empty_directories(folder: Path) -> None:
    for root, _, _ in sorted(os.walk(folder), key=lambda item: -len(Path(item[0]).parts)):
        with contextlib.suppress(OSError):
            Path(root).rmdir()  # fails on a directory that is not empty: exactly what must stay


def remove_stale_temporaries(dest: Path, say: Callable[[str], object] = print) -> list[Path]:
    """Remove the leftovers of interrupted runs writing ``dest`` (never a running one), saying so for each."""
    removed = []
    for stale in stale_temporaries_of(dest):
        if stale.running:
            say(f"note: {stale.describe()} is left alone")
            continue
        remaining = remove_owned_files(stale.path)
        if remaining:
            say(f"note: {stale.path} is what an interrupted run left; it also holds files tsvmerge did not write "
                f"({_listing(remaining)}), which are kept")
        else:
            say(f"removed {stale.path}, what an interrupted run writing {dest} left")
            removed.append(stale.path)
    return removed


# ---------------------------------------------------------------------------------------------------- writing

def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(folder / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def _write_manifests(root: Path, record: OutputRecord) -> None:
    """One manifest per folder: each sub-folder's lists its own files; the top one lists every file below it
    (the sub-folders' manifests included), written last."""
    subfolders = sorted({Path(name).parent for name in _files_below(root)} - {Path(".")}, key=lambda p: -len(p.parts))
    for sub in subfolders:
        _write_manifest(root / sub, record.manifest(n for n in _files_below(root / sub) if n != MANIFEST_NAME))
    _write_manifest(root, record.manifest(n for n in _files_below(root) if n != MANIFEST_NAME))


@contextlib.contextmanager
def owned_directory(dest: Path, record: OutputRecord, planned: Iterable[str] = ()) -> Iterator[Path]:
    """Build the folder ``dest`` in a temporary sibling (yielded), then put it in place as the module docstring
    says; ``planned`` names the files the block will write (relative paths), recorded in the temporary's manifest.

    On any error or interruption inside the block the temporary folder is removed and ``dest`` is untouched.
    Call :func:`check_output_folder` first: an existing ``dest`` is checked again here, at the end.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    tmp.mkdir()
    try:
        _write_manifest(tmp, record.manifest(planned, temporary_for=str(dest.absolute()), pid=os.getpid(),
                                             host=socket.gethostname()))
        yield tmp
        _write_manifests(tmp, record)  # the temporary's own manifest is replaced last, atomically
        _put_in_place(tmp, dest)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise naming_destination(error, tmp, dest) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _put_in_place(new: Path, dest: Path) -> None:
    """Move the complete folder ``new`` to ``dest``, removing only what ``dest``'s manifest lists."""
    if dest.is_dir() and not dest.is_symlink() and not _files_below(dest):
        shutil.rmtree(dest)  # empty directories only
    if not dest.exists():
        os.rename(new, dest)
        fsync_directory(dest.parent)
        return
    owned = _owned(dest)
    if owned is None or not dest.is_dir():
        raise OutputPathError(f"--out {str(dest)!r} was created by someone else while the merge ran; it is left "
                              "alone, and nothing was written")
    foreign = _foreign(dest, owned)
    if not foreign:
        old = temporary_sibling(dest, "old")
        os.rename(dest, old)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        fsync_directory(dest.parent)
        remove_owned_files(old)
        with contextlib.suppress(OSError):
            old.rmdir()
        return
    _merge_into(new, dest, owned - {MANIFEST_NAME}, foreign)


def _merge_into(new: Path, dest: Path, old_files: set[str], foreign: list[str]) -> None:
    """Replace ``dest``'s listed files by ``new``'s, keeping the files tsvmerge did not write (``foreign``)."""
    new_files = set(_files_below(new))
    clashes = sorted(new_files & set(foreign))
    if clashes:
        raise OutputPathError(f"--out {str(dest)!r} now holds files tsvmerge did not write that the merge would "
                              f"overwrite ({_listing(clashes)}); nothing was written")
    # First claim both the old and the new files, so that an interruption leaves every one of them claimable.
    top = json.loads((new / MANIFEST_NAME).read_text())
    _write_manifest(dest, {**top, "files": sorted((old_files | new_files) - {MANIFEST_NAME})})
    for name in sorted(old_files - new_files):
        path = dest / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    for name in sorted(new_files - {MANIFEST_NAME}):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new / name, target)
    os.replace(new / MANIFEST_NAME, dest / MANIFEST_NAME)
    _remove_empty_directories(new)
    for name in _empty_directories_below(dest):
        if not any(f.startswith(name + "/") for f in foreign):
            with contextlib.suppress(OSError):
                (dest / name).rmdir()
    fsync_directory(dest.parent)
