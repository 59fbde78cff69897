"""A safetensors file written one tensor at a time, in a fixed order, without holding the others in memory.

The safetensors layout is an 8-byte little-endian header length, a JSON header giving every tensor's dtype, shape
and byte range, then the raw bytes. When the entries, their shapes and dtypes are known beforehand (as in a merge,
whose shard plan is made from θ0's metadata), the header can be written first and each tensor's bytes appended as
soon as it is computed: the writer holds one tensor at a time, whatever the shard size. The file it produces is
what ``safetensors.torch.save_file`` writes for the same tensors (checked in the tests).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch
from torch import Tensor

__all__ = ["SafetensorsStreamWriter"]

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsStreamWriter:
    """Write ``entries`` (key → (shape, dtype), in this order) to ``path``; :meth:`write` each tensor in that order.

    Closing the writer before every tensor is written raises: a shard is complete or reported broken.
    """

    def __init__(self, path: Path, entries: Sequence[tuple[str, Sequence[int], torch.dtype]],
                 metadata: Mapping[str, str] | None = None) -> None:
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        self._expected: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        offset = 0
        for key, shape, dtype in entries:
            if dtype not in _DTYPES:
                raise ValueError(f"{key}: dtype {dtype} cannot be stored in safetensors")
            nbytes = math.prod(shape) * dtype.itemsize
            header[key] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((key, tuple(shape), dtype))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(struct.pack("<Q", len(text)))
        self._file.write(text)
        self._next = 0

    def write(self, key: str, tensor: Tensor) -> None:
        """Append ``tensor``, which must be the next planned entry, with its planned shape and dtype."""
        if self._next >= len(self._expected):
            raise ValueError(f"{key}: every planned tensor is already written")
        expected_key, shape, dtype = self._expected[self._next]
        if key != expected_key or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"expected {expected_key} {list(shape)} {dtype}, got {key} {list(tensor.shape)} "
                             f"{tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            self._file.write(data.view(torch.uint8).numpy().data)
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self._expected):
            missing = self._expected[self._next][0]
            raise RuntimeError(f"safetensors file closed with {len(self._expected) - self._next} tensor(s) not "
                               f"written, from {missing}")

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:  # an error inside: close the file, report the original error
            self._file.close()
            return
        self.close()
