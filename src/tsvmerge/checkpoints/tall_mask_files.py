"""TALL mask files in the published format (SPEC §1), read without ``np.load(allow_pickle=True)``.

The published code stores ``np.save(path, {dataset: np.packbits(flat_bool_mask)})``: a 0-d object array, i.e. a
pickle. Masks are shared as downloads, so the payload is unpickled with an allow-list of numpy's own array
reconstruction functions and plain containers only.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from tsvmerge.checkpoints.paths import require_file
from tsvmerge.utils.files import PathLike, atomic_write
from tsvmerge.checkpoints.restricted_unpickler import UnsafeCheckpointError, _RestrictedUnpickler

__all__ = [
    "check_mask_file",
    "load_tall_masks",
    "mask_file_tasks",
    "mask_record_path",
    "read_mask_record",
    "read_packed_masks",
    "save_tall_masks",
    "tall_mask_allow_list",
]


def tall_mask_allow_list() -> dict[str, object]:
    """Globals that an ``np.save``d dict of uint8 arrays needs, under numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray  # numpy >= 2 (numpy.core is a deprecated alias there)
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    allowed: dict[str, object] = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = multiarray._reconstruct
        allowed[f"{module}.scalar"] = multiarray.scalar
    return allowed


def mask_record_path(path: PathLike) -> Path:
    """The record written beside a mask file: ``<file>.npy.json`` (tasks and the parameters the masks were built
    with; published files have none)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_tall_masks(path: PathLike, masks: Mapping[str, np.ndarray], *,
                    built_with: Mapping[str, Any] | None = None) -> None:
    """Write ``{name: flat bool mask}`` as ``np.save(path, {name: np.packbits(mask)})``, atomically, and beside it
    a record of the task names and the parameters the masks were built with (``built_with``)."""
    packed: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        arr = np.asarray(mask)
        if arr.dtype != np.bool_ or arr.ndim != 1:
            raise TypeError(f"TALL mask {name!r} must be a flat bool array, got dtype {arr.dtype}, shape {arr.shape}")
        packed[str(name)] = np.packbits(arr)

    def write(tmp: Any) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
            np.save(fh, packed, allow_pickle=True)

    record = {"tasks": list(packed), "built_with": dict(built_with or {})}
    atomic_write(path, write)
    atomic_write(mask_record_path(path), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))


def read_mask_record(path: PathLike) -> dict[str, Any] | None:
    """The record beside a mask file (``{"tasks": [...], "built_with": {...}}``), or None (published files)."""
    record_path = mask_record_path(path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{record_path}: unreadable TALL-mask record ({exc}); delete it together with {path}") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("tasks"), list):
        raise ValueError(f"{record_path} is not a TALL-mask record; delete it together with {path}")
    return record


def mask_file_tasks(path: PathLike) -> list[str]:
    """The task names a mask file holds masks for (from its record, else from the file itself)."""
    record = read_mask_record(path)
    if record is not None:
        return [str(t) for t in record["tasks"]]
    return list(load_tall_masks(path))


def check_mask_file(path: PathLike, tasks: Sequence[str], built_with: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError unless the mask file at ``path`` holds masks for every task of ``tasks`` built with the
    same parameters (when its record says how it was built); the message names both task lists."""
    saved = mask_file_tasks(path)
    missing = [t for t in tasks if t not in saved]
    if missing:
        raise ValueError(f"{path} holds TALL masks for {saved}, not for the merged tasks {list(tasks)} "
                         f"(missing: {missing}); run tall_mask on these tasks first, or give the mask file of "
                         "these tasks (method.mask_file=...)")
    record = read_mask_record(path)
    if record is not None and built_with is not None:
        recorded = record.get("built_with") or {}
        differing = {k: (recorded.get(k), v) for k, v in built_with.items() if k in recorded and recorded[k] != v}
        if differing:
            details = ", ".join(f"{k}: file {a!r}, run {b!r}" for k, (a, b) in differing.items())
            raise ValueError(f"{path} holds TALL masks built with other parameters ({details})")


def _read_object_payload(fh: BinaryIO, source: str) -> object:
    version = npy_format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = npy_format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = npy_format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"{source}: unsupported .npy format version {version}")
    if dtype != np.dtype(object) or shape != ():
        raise ValueError(
            f"{source} is not a TALL mask file: expected a pickled dict (0-d object array), "
            f"found an array of dtype {dtype} and shape {shape}"
        )
    try:
        array = _RestrictedUnpickler(fh, tall_mask_allow_list(), source).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: corrupt TALL mask payload: {type(exc).__name__}: {exc}") from exc
    if isinstance(array, np.ndarray) and array.dtype == object and array.shape == ():
        return array.item()
    return array


def read_packed_masks(path: PathLike) -> dict[str, np.ndarray]:
    """The packed masks of a TALL mask file, ``{name: 1-D uint8 array}``, checked but not unpacked (a cheap check of
    a downloaded file: unpacked, the masks of a ViT-L-14 take gigabytes)."""
    p = require_file(path, what="TALL mask file")
    with open(p, "rb") as fh:
        payload = _read_object_payload(fh, str(p))
    if not isinstance(payload, dict):
        raise ValueError(f"{p} is not a TALL mask file: it holds a {type(payload).__name__}, not a dict")
    for name, packed in payload.items():
        is_packed = isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 1
        if not isinstance(name, str) or not is_packed:
            raise ValueError(f"{p}: entry {name!r} is not a packed mask (a 1-D uint8 array)")
    return payload


def load_tall_masks(path: PathLike, num_entries: int | None = None) -> dict[str, np.ndarray]:
    """Read a TALL mask file into ``{name: flat bool array}``.

    Packed masks are padded to a multiple of 8 entries; give ``num_entries`` (the number of entries of the
    pre-trained state dict) to trim them, which also checks that the file was built for a model of that size.
    """
    p = Path(path)
    masks: dict[str, np.ndarray] = {}
    for name, packed in read_packed_masks(p).items():
        if num_entries is not None and packed.size != -(-num_entries // 8):
            raise ValueError(
                f"{p}: mask {name!r} has {packed.size * 8} bits (packed), which does not fit a model with "
                f"{num_entries} entries; was it built for another model?"
            )
        bits = np.unpackbits(packed)
        masks[name] = (bits[:num_entries] if num_entries is not None else bits).astype(bool)
    return masks
