"""Reading and writing image-encoder state dicts without holding every checkpoint in anonymous memory.

Merging 20 ViT-L/14 checkpoints means ~25 GB of weights; opening them lazily (memory-mapped ``torch.save`` zip
archives, per-tensor reads from safetensors) lets the page cache, not the process heap, hold what is not in use.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsvmerge.checkpoints.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointPermissionError,
    CorruptCheckpointError,
    NonFiniteCheckpointError,
    permission_problem,
)
from tsvmerge.checkpoints.paths import CheckpointNotFoundError, require_file
from tsvmerge.utils.files import PathLike, atomic_write
from tsvmerge.checkpoints.safe_pickle import (
    LEGACY_IMAGE_ENCODER_PATHS,
    UnsafeCheckpointError,
    checkpoint_format,
    load_legacy_module,
    load_pickled_object,
)

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointPermissionError",
    "CorruptCheckpointError",
    "LazyStateDict",
    "NonFiniteCheckpointError",
    "check_compatible",
    "check_finite",
    "source_name",
    "open_state_dict",
    "save_state_dict",
]

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

# Keys under which training scripts commonly nest the real state dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "image_encoder")


class LazyStateDict(Mapping[str, Tensor]):
    """Read-only ``{name: tensor}`` view of a checkpoint file, opened by :func:`open_state_dict`.

    ``file_backed`` tells whether the tensors stay in the file (memory-mapped archive, safetensors) or were read
    into memory (legacy formats). ``shape``/``dtype`` never read tensor data.
    """

    path: Path
    file_backed: bool

    def __init__(self, path: Path, file_backed: bool) -> None:
        self.path = path
        self.file_backed = file_backed

    def shape(self, key: str) -> torch.Size:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle (tensors already returned stay valid)."""

    def __enter__(self) -> LazyStateDict:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} tensors)"

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"{key!r} is not in the state dict of {self.path}")


class _TensorDictStateDict(LazyStateDict):
    """Backed by a dict of tensors (memory-mapped when loaded from a zip archive)."""

    def __init__(self, path: Path, tensors: dict[str, Tensor], file_backed: bool) -> None:
        super().__init__(path, file_backed)
        self._tensors = tensors

    def __getitem__(self, key: str) -> Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise self._missing(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> torch.Size:
        return self[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self[key].dtype

    def close(self) -> None:
        pass  # mmap-backed storages unmap when the last tensor using them is freed


class _SafetensorsStateDict(LazyStateDict):
    """Backed by an open safetensors file: each ``__getitem__`` reads one tensor."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        super().__init__(path, file_backed=True)
        try:
            self._file: Any = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError for malformed headers
            denied = permission_problem(path, exc)  # safetensors words EACCES "No such file or directory"
            if denied is not None:
                raise denied from exc
            raise CorruptCheckpointError(
                f"cannot read checkpoint {str(path)!r}: not a valid safetensors file ({exc}); it is truncated or "
                "damaged. Download or save it again."
            ) from exc
        self._keys = list(self._file.keys())
        self._key_set = frozenset(self._keys)

    def _handle(self) -> Any:
        if self._file is None:
            raise ValueError(f"the state dict of {self.path} was closed")
        return self._file

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._key_set:
            raise self._missing(key)
        return self._handle().get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> torch.Size:
        if key not in self._key_set:
            raise self._missing(key)
        return torch.Size(self._handle().get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if key not in self._key_set:
            raise self._missing(key)
        name = self._handle().get_slice(key).get_dtype()
        if name not in _SAFETENSORS_DTYPES:
            raise CheckpointFormatError(f"{self.path}: tensor {key!r} has dtype {name}, unsupported here")
        return _SAFETENSORS_DTYPES[name]

    def close(self) -> None:
        self._file = None


def _as_flat_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """Check that a loaded object is ``{str: Tensor}``, explaining precisely what it is otherwise."""
    if isinstance(obj, torch.nn.Module):
        raise CheckpointFormatError(
            f"{path} holds a pickled {type(obj).__name__} module, not a state dict; for a task_vectors-style "
            "whole image encoder use tsvmerge.checkpoints.load_legacy_module"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state dict {{name: tensor}}")
    for key in _NESTED_STATE_KEYS:
        if isinstance(obj.get(key), Mapping):
            raise CheckpointFormatError(
                f"{path} is a training checkpoint, not a state dict: its top-level keys are "
                f"{_preview(list(obj))} and the weights are nested under {key!r}; save that entry alone, e.g. "
                f"torch.save(ckpt[{key!r}], path)"
            )
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointFormatError(f"{path}: state-dict keys must be strings, got {_preview(bad_keys)}")
    non_tensors = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise CheckpointFormatError(
            f"{path} is not a flat state dict: these entries are not tensors: {_preview(non_tensors)}"
        )
    return dict(obj)


def open_state_dict(path: PathLike) -> LazyStateDict:
    """Open a state-dict file lazily; ``.safetensors`` by extension, anything else as a ``torch.save`` file.

    Zip archives are memory-mapped (tensors stay file-backed); legacy ``torch.save`` streams and plain pickles
    cannot be, and are read into memory with a warning. A task_vectors-style file holding a whole pickled
    ``ImageEncoder`` is read through :func:`load_legacy_module`. Missing files raise CheckpointNotFoundError.
    """
    p = require_file(path)
    if p.suffix == ".safetensors":
        return _SafetensorsStateDict(p)
    fmt = checkpoint_format(p)
    try:
        obj = load_pickled_object(p, {}, mmap=True)
    except UnsafeCheckpointError as exc:
        if exc.global_name not in LEGACY_IMAGE_ENCODER_PATHS:
            raise UnsafeCheckpointError(
                f"{exc}\nA state dict {{name: tensor}} was expected; if {p} holds a whole pickled module, "
                "re-save its state_dict() (or, for task_vectors encoders, use load_legacy_module).",
                path=exc.path,
                global_name=exc.global_name,
            ) from None
        warnings.warn(
            f"{p} holds a whole pickled task_vectors ImageEncoder; reading its weights through the restricted "
            "legacy loader. Re-saving it as a state dict makes later runs faster.",
            stacklevel=2,
        )
        return _TensorDictStateDict(p, load_legacy_module(p), file_backed=fmt == "zip")
    if fmt != "zip":
        warnings.warn(
            f"{p} is a {'legacy torch.save' if fmt == 'torch_legacy' else 'plain pickle'} file, which cannot be "
            "memory-mapped: all its tensors are read into memory. Re-save it with torch.save (zip format) or "
            "as .safetensors to open it lazily.",
            stacklevel=2,
        )
    return _TensorDictStateDict(p, _as_flat_state_dict(obj, p), file_backed=fmt == "zip")


def _preview(items: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(x) for x in list(items)[:limit])
    more = len(items) - limit
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _shape_of(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if isinstance(state, LazyStateDict):
        return tuple(state.shape(key))
    return tuple(state[key].shape)


def _is_floating(state: Mapping[str, Any], key: str) -> bool:
    dtype = state.dtype(key) if isinstance(state, LazyStateDict) else state[key].dtype
    return dtype.is_floating_point


def source_name(state: Mapping[str, Any], fallback: str) -> str:
    """The file a state dict was read from (how users know it), else ``fallback``."""
    return str(state.path) if isinstance(state, LazyStateDict) else fallback


def _differences(reference: Mapping[str, Any], other: Mapping[str, Any], ref_name: str) -> list[str]:
    """What differs between ``other`` and ``reference``, one line per kind; only shapes and dtypes are read."""
    ref_keys = list(reference)
    ref_set, other_set = set(ref_keys), set(other)
    missing = [k for k in ref_keys if k not in other_set]
    extra = sorted(k for k in other_set if k not in ref_set)
    shapes, kinds = [], []
    for key in (k for k in ref_keys if k in other_set):
        a, b = _shape_of(reference, key), _shape_of(other, key)
        if a != b:
            shapes.append(f"{key}: {list(b)} here vs {list(a)} in {ref_name}")
        elif _is_floating(reference, key) != _is_floating(other, key):
            kinds.append(key)
    lines = []
    if missing:
        lines.append(f"  {len(missing)} missing keys: {_preview(missing)}")
    if extra:
        lines.append(f"  {len(extra)} unexpected keys: {_preview(extra)}")
    if shapes:
        lines.append(f"  {len(shapes)} keys with different shapes: {_preview(shapes)}")
    if kinds:
        lines.append(f"  {len(kinds)} keys floating-point in one file and integer in the other: {_preview(kinds)}")
    return lines


def check_compatible(reference: Mapping[str, Any], others: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Raise CheckpointMismatchError unless every state dict in ``others`` has the keys and shapes of ``reference``.

    ``names`` labels ``others`` (typically their file paths) in the message, whose first line names the first file
    that differs; only shapes and dtypes are compared, so lazily opened files are not read.
    """
    if len(others) != len(names):
        raise ValueError(f"check_compatible: {len(others)} state dicts but {len(names)} names")
    ref_name = str(reference.path) if isinstance(reference, LazyStateDict) else "the reference"
    problems = [(name, lines) for other, name in zip(others, names)
                if (lines := _differences(reference, other, ref_name))]
    if not problems:
        return
    text = []
    for name, lines in problems:
        text.append(f"{name} does not match {ref_name}:")
        text.extend(lines)
    more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
    raise CheckpointMismatchError(
        f"checkpoint {problems[0][0]} does not match {ref_name}{more}; are they all fine-tuned from the same "
        "model?\n" + "\n".join(text)
    )


#: Values per block of :func:`check_finite`'s sums (16 MiB of float32).
_FINITE_BLOCK = 1 << 22


def check_finite(tensor: Tensor, key: str, source: str) -> None:
    """Raise NonFiniteCheckpointError if ``tensor`` (entry ``key`` of file ``source``) holds NaN or ±inf.

    Cheap for the usual finite tensor: float32-accumulated sums, finite exactly when every value is (short of an
    overflow, which the exact check below then clears), over blocks of 2²² values, so that a half-precision
    vocabulary-sized embedding is never converted whole.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    flat = tensor.reshape(-1)
    accumulate = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    blocks = [flat[start:start + _FINITE_BLOCK] for start in range(0, flat.numel(), _FINITE_BLOCK)]
    # float8 has no reductions of its own: each block is converted
    sums = (torch.sum(block.float() if block.element_size() == 1 else block, dtype=accumulate) for block in blocks)
    if all(bool(torch.isfinite(total)) for total in sums):
        return
    bad = sum(int((~torch.isfinite(block.float() if block.element_size() == 1 else block)).sum()) for block in blocks)
    if bad:
        raise NonFiniteCheckpointError(
            f"checkpoint {source} holds {bad} NaN or infinite value(s) in {key!r}; nothing meaningful can be "
            "merged from it. Use a checkpoint saved before training diverged, or fix that tensor."
        )


def save_state_dict(state: Mapping[str, Tensor], path: PathLike) -> Path:
    """Write ``state`` atomically: safetensors for ``.safetensors``, else a ``torch.save``d plain dict.

    Tensors are moved to the CPU; for safetensors they are made contiguous and tensors sharing storage are
    cloned (the format forbids aliasing). Parent directories are created.
    """
    dest = Path(path)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"save_state_dict expects {{str: Tensor}}; offending entries: {_preview(bad)}")
    tensors = {key: value.detach().cpu() for key, value in state.items()}
    if dest.suffix == ".safetensors":
        from safetensors.torch import save_file

        prepared = untied_contiguous(tensors)
        atomic_write(dest, _reporting_os_errors(lambda tmp: save_file(prepared, str(tmp))))
    else:
        atomic_write(dest, _reporting_os_errors(lambda tmp: torch.save(tensors, tmp)))
    return dest


def untied_contiguous(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, each with storage of its own: safetensors refuses tensors sharing memory (tied weights),
    so a second tensor on the same storage is cloned."""
    seen: set[int] = set()
    prepared: dict[str, Tensor] = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        if ptr is not None and ptr in seen:
            value = value.clone()
        elif ptr is not None:
            seen.add(ptr)
        prepared[key] = value.contiguous()
    return prepared


def _reporting_os_errors(write: Callable[[Path], object]) -> Callable[[Path], object]:
    """``write``, whose failures to write (a full disk, an I/O error: torch raises RuntimeError, safetensors its own
    SafetensorError) are raised as OSError, so that they name the file and stop the run with one line."""
    from safetensors import SafetensorError

    def guarded(tmp: Path) -> object:
        try:
            return write(tmp)
        except (RuntimeError, SafetensorError) as exc:
            match = re.search(r"code: (\d+)", str(exc))  # safetensors reports the OS error code
            code = int(match.group(1)) if match else errno.EIO
            reason = os.strerror(code) if match else f"writing failed ({str(exc).strip()})"
            raise OSError(code, reason, str(tmp)) from exc
    return guarded
