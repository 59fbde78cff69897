"""Restricted unpickling of the published pickled objects (heads, old whole-module encoders).

Checkpoints come from the internet; full ``pickle`` would run whatever code a file names. Every loader here only
admits an explicit allow-list of globals and maps the published class paths (``src.models.modeling.*``) onto the
project's own classes, so the authors' ``src`` package is never needed and never imported.

Three on-disk formats exist. ``torch.save`` zip archives are read by torch's own ``weights_only`` unpickler with a
temporary allow-list. Pre-1.6 "legacy" ``torch.save`` streams and plain ``pickle.dump`` files (older heads) are
read by a ``pickle.Unpickler`` whose ``find_class`` admits only the allow-list plus torch's tensor rebuild helpers
(for legacy streams, plugged into ``torch.load`` as its ``pickle_module``).
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
import pkgutil
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
    "LEGACY_IMAGE_ENCODER_PATHS",
    "LegacyImageEncoder",
    "UnsafeCheckpointError",
    "checkpoint_format",
    "legacy_module_allow_list",
    "load_legacy_module",
    "load_pickled_object",
    "tensor_allow_list",
]

FileFormat = Literal["zip", "torch_legacy", "pickle"]

LEGACY_IMAGE_ENCODER_PATHS = ("src.modeling.ImageEncoder", "src.models.modeling.ImageEncoder")


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


# ------------------------------------------------------------------------------- legacy whole-module files
class LegacyImageEncoder(torch.nn.Module):
    """Stand-in for the task_vectors ``ImageEncoder``: a module holding the CLIP model as attribute ``model``.

    Only its ``state_dict()`` is used; the published class also carried preprocessing transforms, which are
    loaded as inert placeholders.
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        super().__init__()
        if model is not None:
            self.model = model


class _InertModule(torch.nn.Module):
    """Placeholder for every torch.nn / open_clip module class in a legacy file.

    Unpickling only restores ``__dict__`` (parameters, buffers, submodules), which is all ``state_dict()`` reads,
    so no constructor or method of the real class is ever run on file-controlled data; it also makes the
    loader independent of the open_clip version that wrote the file.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()


class _Opaque:
    """Placeholder for the non-module objects a legacy encoder carries (preprocessing transforms, enums)."""

    def __new__(cls, *args: object, **kwargs: object) -> _Opaque:
        return super().__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass  # the state of a transform is irrelevant to the weights


def _classes_defined_in(module: types.ModuleType, base: type | None = None) -> Iterator[str]:
    for value in vars(module).values():
        defined_here = isinstance(value, type) and value.__module__ == module.__name__
        if defined_here and (base is None or issubclass(value, base)):
            yield f"{module.__name__}.{value.__qualname__}"


def _functions_defined_in(module: types.ModuleType) -> Iterator[str]:
    for value in vars(module).values():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            yield f"{module.__name__}.{value.__qualname__}"


def _import_optional(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# Names of open_clip 1.x, where the towers lived in open_clip.model; harmless to admit since they map to _InertModule.
_OLD_OPEN_CLIP_MODULE_CLASSES = tuple(
    f"open_clip.model.{name}"
    for name in (
        "VisualTransformer",
        "VisionTransformer",
        "Transformer",
        "ResidualAttentionBlock",
        "LayerNorm",
        "LayerNormFp32",
        "QuickGELU",
        "LayerScale",
        "ModifiedResNet",
        "AttentionPool2d",
        "Bottleneck",
    )
)


def legacy_module_allow_list() -> dict[str, object]:
    """Allow-list for whole pickled image encoders, enumerated from the modules that define those classes.

    * torch.nn module classes (every ``torch.nn.modules.*`` submodule) and open_clip's model classes
      (``open_clip.model``, ``open_clip.transformer``, ``open_clip.modified_resnet``) -> ``_InertModule``;
    * torchvision transform classes, ``InterpolationMode`` and open_clip's transform helpers -> ``_Opaque``
      (``_InertModule`` for those that are modules);
    * the task_vectors ``ImageEncoder`` paths -> ``LegacyImageEncoder``.
    timm- or Hugging-Face-based towers are deliberately not admitted.
    """
    allowed: dict[str, object] = {}
    import torch.nn.modules as nn_modules

    for info in pkgutil.iter_modules(nn_modules.__path__):
        sub = _import_optional(f"torch.nn.modules.{info.name}")
        if sub is not None:
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
    for name in ("open_clip.model", "open_clip.transformer", "open_clip.modified_resnet"):
        sub = _import_optional(name)
        if sub is not None:
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
    allowed.update(dict.fromkeys(_OLD_OPEN_CLIP_MODULE_CLASSES, _InertModule))

    for name in ("torchvision.transforms.transforms", "open_clip.transform"):
        sub = _import_optional(name)
        if sub is not None:
            # Transforms that are nn.Modules stay modules (torch's legacy format records module classes apart).
            allowed.update(dict.fromkeys(_classes_defined_in(sub), _Opaque))
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
            allowed.update(dict.fromkeys(_functions_defined_in(sub), _Opaque))
    for name in ("torchvision.transforms.functional.InterpolationMode", "PIL.Image.Resampling"):
        allowed[name] = _Opaque

    allowed.update(dict.fromkeys(LEGACY_IMAGE_ENCODER_PATHS, LegacyImageEncoder))
    return allowed


def load_legacy_module(path: PathLike) -> dict[str, torch.Tensor]:
    """State dict of a task_vectors-style file (``zeroshot.pt`` / ``finetuned.pt``) holding a whole pickled encoder.

    The keys are those of the published state dicts (``model.visual.*``, ...). Raises UnsafeCheckpointError when
    the file needs a global outside the allow-list (e.g. an open_clip class this loader does not know).
    """
    p = require_file(path)
    try:
        obj = load_pickled_object(p, legacy_module_allow_list(), mmap=True)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(
            f"{exc}\nThis loader only admits torch.nn / open_clip (model, transformer, modified_resnet) module "
            "classes and torchvision/open_clip transforms; re-save the file as a state dict with the code that "
            "wrote it, e.g. torch.save(encoder.state_dict(), path), if it needs anything else.",
            path=exc.path,
            global_name=exc.global_name,
        ) from None
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"{p} does not hold a pickled module but a {type(obj).__name__}")
    if not isinstance(obj, LegacyImageEncoder) or not isinstance(getattr(obj, "model", None), torch.nn.Module):
        raise TypeError(
            f"{p} holds a pickled module that is not a task_vectors ImageEncoder "
            f"({' or '.join(LEGACY_IMAGE_ENCODER_PATHS)}) with a CLIP model in attribute 'model'"
        )
    try:
        state = obj.state_dict()
    except Exception as exc:  # a module whose pickled __dict__ lacks what state_dict() reads
        raise TypeError(f"cannot extract a state dict from the module pickled in {p}: {exc}") from exc
    return {key: value.detach() for key, value in state.items()}

