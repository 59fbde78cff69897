"""Generic restricted unpickling: load a pickled file admitting only the globals of an explicit allow-list.

Why this module exists: checkpoints, heads and mask files come from the internet, and full ``pickle`` would run
whatever code a file names. ``torch.load(weights_only=True)`` covers only part of the problem (it cannot read
plain ``pickle.dump`` files or whole modules in torch's pre-1.6 format), so this module gives every reader of the
project one loader that works like ``weights_only`` for all three formats, with a caller-supplied allow-list that
maps each qualified name found in a file onto the object to use instead. It knows nothing about what the published
files contain: those allow-lists live with their callers (:mod:`tsvmerge.checkpoints.safe_pickle` for the old
whole-module encoders, :mod:`tsvmerge.models.heads`, :mod:`tsvmerge.checkpoints.tall_mask_files`).

Three on-disk formats exist. ``torch.save`` zip archives are read by torch's own ``weights_only`` unpickler with a
temporary allow-list. Pre-1.6 "legacy" ``torch.save`` streams and plain ``pickle.dump`` files (older heads) are
read by a ``pickle.Unpickler`` whose ``find_class`` admits only the allow-list plus torch's tensor rebuild helpers
(for legacy streams, plugged into ``torch.load`` as its ``pickle_module``).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from tsvmerge.checkpoints.errors import CheckpointPermissionError, CorruptCheckpointError
from tsvmerge.checkpoints.paths import PathLike, require_file
from tsvmerge.utils.errors import UserError

__all__ = [
    "FileFormat",
    "UnsafeCheckpointError",
    "checkpoint_format",
    "load_pickled_object",
    "tensor_allow_list",
]

FileFormat = Literal["zip", "torch_legacy", "pickle"]

_WHY = "(a pickle can make any global it names run code, so only listed ones are admitted)"


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (or used an operation the loader refuses)."""

    def __init__(self, message: str, *, path: str | None = None, global_name: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.global_name = global_name


# --------------------------------------------------------------------------------------------- file format
_ZIP_MAGIC = b"PK\x03\x04"
# torch.save(..., _use_new_zipfile_serialization=False) starts with pickle.dump(MAGIC_NUMBER): PROTO n, LONG1 ...
_LEGACY_TORCH_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:]


def checkpoint_format(path: PathLike) -> FileFormat:
    """Tell a ``torch.save`` zip archive, a legacy ``torch.save`` stream and a plain pickle apart by their bytes.

    A file this user may not read raises CheckpointPermissionError (the first read of every loader is here)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2 + len(_LEGACY_TORCH_MAGIC))
    except PermissionError as exc:
        raise CheckpointPermissionError(path) from exc
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[:1] == b"\x80" and head[2:] == _LEGACY_TORCH_MAGIC:
        return "torch_legacy"
    return "pickle"


# --------------------------------------------------------------------------------- allow-list building blocks
def _safe_load_from_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` (which calls ``torch.load(weights_only=False)``).

    ``pickle.dump`` of a tensor stores its storage as the bytes of a legacy ``torch.save``; read them with torch's
    weights-only unpickler instead.
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _translate_torch_error(exc, "<embedded tensor storage>") from None


def tensor_allow_list() -> dict[str, object]:
    """Globals a pickled tensor / state dict needs under plain ``pickle`` (torch's weights-only loader has its own)."""
    allowed: dict[str, object] = {
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.storage._load_from_bytes": _safe_load_from_bytes,
    }
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    ):
        if hasattr(torch._utils, name):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[f"torch.{name}"] = value
    return allowed


# ------------------------------------------------------------------------------------- error translation
_TORCH_REFUSAL_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"reduce for unrecognized function (.+?)(?: which belongs to .*)?$", re.M),
    re.compile(r"Can only create new object for .* but got (.+)$", re.M),
    re.compile(r"Can only build .* but got (.+)$", re.M),
)


def _translate_torch_error(exc: pickle.UnpicklingError, source: str) -> UnsafeCheckpointError:
    """Turn torch's weights-only refusal (whose text advises ``weights_only=False``) into our own error."""
    message = str(exc)
    for pattern in _TORCH_REFUSAL_PATTERNS:
        match = pattern.search(message)
        if match:
            name = match.group(1).strip()
            if pattern is _TORCH_REFUSAL_PATTERNS[0] and "." not in name:
                name = f"builtins.{name}"  # torch strips the "builtins." prefix from the names it reports
            return UnsafeCheckpointError(
                f"refusing to load {source}: it references {name!r}, which is not on the allow-list for "
                f"this kind of file {_WHY}.",
                path=source,
                global_name=name,
            )
    detail = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
    return UnsafeCheckpointError(
        f"refusing to load {source}: torch's weights-only unpickler rejected it: {detail}", path=source
    )


# -------------------------------------------------------------------------------------------- unpicklers
class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) come only from ``allowed``.

    It defines no ``persistent_load``: torch's legacy loader installs its own (storages only) on the instance.
    """

    def __init__(self, fh: BinaryIO, allowed: Mapping[str, object], source: str, encoding: str = "latin1") -> None:
        super().__init__(fh, encoding=encoding)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__``, ``copy_reg``) as pickle's own find_class maps them with fix_imports.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in self._allowed:
            return self._allowed[full]
        raise UnsafeCheckpointError(
            f"refusing to load {self._source}: it references {full!r}, which is not on the allow-list for this "
            f"kind of file {_WHY}.",
            path=self._source,
            global_name=full,
        )


def _restricted_pickle_module(allowed: Mapping[str, object], source: str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``, built per call."""

    class Unpickler(_RestrictedUnpickler):
        def __init__(self, fh: BinaryIO, *, encoding: str = "latin1", **_ignored: object) -> None:
            super().__init__(fh, allowed, source, encoding=encoding)

    module = types.ModuleType("tsvmerge_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    module.load = lambda fh, **kwargs: Unpickler(fh, **kwargs).load()  # type: ignore[attr-defined]
    return module


@contextmanager
def _torch_safe_globals(allow: Mapping[str, object]) -> Iterator[None]:
    """Temporarily allow ``allow`` in torch's weights-only unpickler, under the published names.

    ``torch.serialization.safe_globals`` edits a process-wide set and, on exit, removes its entries even if the
    caller had added the same entry before; pass it only the entries that are not there yet.
    """
    existing = set(torch.serialization.get_safe_globals())
    entries = [(obj, name) for name, obj in allow.items() if (obj, name) not in existing]
    with torch.serialization.safe_globals(entries):
        yield


def _torch_load(path: Path, allow: Mapping[str, object], mmap: bool) -> Any:
    with _torch_safe_globals(allow):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if isinstance(exc, UnsafeCheckpointError):
                raise
            raise _translate_torch_error(exc, str(path)) from None
        except (RuntimeError, EOFError, ValueError, KeyError) as exc:  # torch's zip reader: truncated / damaged
            raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: BaseException) -> CorruptCheckpointError:
    """The error for a file no loader can read, naming it and saying what to do."""
    if path.stat().st_size == 0:
        reason = "the file is empty"
    else:
        detail = str(exc).split(". This is an internal")[0].strip() or type(exc).__name__
        reason = f"{type(exc).__name__}: {detail}"
    return CorruptCheckpointError(
        f"cannot read checkpoint {str(path)!r} ({reason}); it is truncated, damaged or not a checkpoint "
        "(torch.save / pickle / .safetensors). Download or save it again."
    )


def _torch_legacy_load(path: Path, allowed: Mapping[str, object]) -> Any:
    """Read a pre-1.6 ``torch.save`` stream through torch's own reader, with our restricted unpickler.

    torch's weights-only mode cannot read whole modules in this format (their class is recorded through a
    ``("module", cls, source)`` persistent id it refuses), so the documented ``pickle_module`` hook is used
    instead; torch itself only resolves storage types and storages. The file object hides its ``fileno`` so
    that torch skips its pre-0.4 tar-archive attempt (which extracts archive members to disk). Source-change
    warnings about the classes we substitute are meaningless and silenced.
    """
    with _NoFilenoReader(io.FileIO(path, "rb")) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        return torch.load(
            fh,
            map_location="cpu",
            weights_only=False,
            pickle_module=_restricted_pickle_module(allowed, str(path)),
        )


class _NoFilenoReader(io.BufferedReader):
    """Buffered file reader that claims to have no file descriptor (see ``_torch_legacy_load``)."""

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def load_pickled_object(path: PathLike, allow: Mapping[str, object], *, mmap: bool = False) -> Any:
    """Load a ``torch.save``d or ``pickle.dump``ed object admitting only the globals in ``allow``.

    ``allow`` maps the qualified name found in the file (``"src.models.modeling.ClassificationHead"``) onto the
    object to use instead. Tensor rebuild helpers are always admitted. ``mmap=True`` keeps the tensors of a zip
    archive file-backed (ignored for the other formats, which cannot be mapped).
    """
    p = require_file(path)
    fmt = checkpoint_format(p)
    if fmt == "zip":
        return _torch_load(p, allow, mmap=mmap)
    allowed = {**tensor_allow_list(), **allow}
    try:
        if fmt == "torch_legacy":
            return _torch_legacy_load(p, allowed)
        with open(p, "rb") as fh:
            return _RestrictedUnpickler(fh, allowed, str(p)).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError, KeyError,
            IndexError, OverflowError, MemoryError) as exc:
        raise _unreadable(p, exc) from exc
