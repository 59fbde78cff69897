"""A Hugging Face model folder read as one lazy state dict, whatever the number of weight shards.

``save_pretrained`` writes either one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
(older models: ``pytorch_model*.bin`` and ``pytorch_model.bin.index.json``). Each shard is opened lazily (only the
safetensors headers are read, ``.bin`` archives are memory-mapped through the restricted loader), and a tensor is
read from its shard when asked for, so a merge holds one entry at a time, never a whole model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsvmerge.checkpoints.errors import CheckpointFormatError, CheckpointPermissionError, CorruptCheckpointError
from tsvmerge.checkpoints.output_folders import MANIFEST_NAME
from tsvmerge.checkpoints.paths import CheckpointNotFoundError
from tsvmerge.checkpoints.state_dict import LazyStateDict, open_state_dict

__all__ = [
    "WEIGHTS_INDEX_NAMES",
    "AmbiguousModelFolderError",
    "HFModelFolder",
    "is_model_folder",
    "is_weight_file",
    "model_files",
    "weights_layout",
]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHTS_INDEX_NAMES = (SAFETENSORS_INDEX, BIN_INDEX)
# Single-file layouts, in the order transformers prefers them.
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# The order in which transformers' from_pretrained looks for weights (safetensors first).
_FROM_PRETRAINED_ORDER = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin", BIN_INDEX)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


class AmbiguousModelFolderError(CheckpointFormatError):
    """A model folder holds two sets of weights, and which one the user means cannot be told."""


def is_weight_file(name: str) -> bool:
    """Weights or a weights index: what a merged model folder replaces rather than copies."""
    return name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json")


def is_model_folder(path: Path) -> bool:
    """A directory holding weights in one of the layouts ``save_pretrained`` writes."""
    return path.is_dir() and any((path / name).is_file() for name in (*WEIGHTS_INDEX_NAMES, *_SINGLE_FILES))


def model_files(folder: Path) -> list[Path]:
    """The folder's non-weight files a merged model keeps (config, generation config, tokenizer...).

    Hidden files, the model card (which describes the base model, not the merge) and a manifest of an earlier
    merge (which describes that merge) are left out.
    """
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not is_weight_file(p.name)
                  and p.name.lower() != "readme.md" and p.name != MANIFEST_NAME)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except PermissionError:
        raise CheckpointPermissionError(path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"cannot read {str(path)!r}: {exc}; the model folder is damaged. Download "
                                     "or save it again.") from exc


def weights_layout(folder: Path) -> str | None:
    """The one weights file (single file or index) of ``folder``, None when it holds none.

    A folder holding a single file and a sharded set, or two index files, is refused: which one would be merged
    is a guess, and ``from_pretrained`` may well load the other. Two single files (``model.safetensors`` beside
    ``pytorch_model.bin``, as many hub repositories ship the same weights) are read as transformers reads them:
    the safetensors file.
    """
    present = [name for name in _FROM_PRETRAINED_ORDER if (folder / name).is_file()]
    indexes = [name for name in present if name in WEIGHTS_INDEX_NAMES]
    if len(indexes) > 1 or (indexes and len(present) > len(indexes)):
        raise AmbiguousModelFolderError(
            f"{str(folder)!r} holds two sets of weights ({' and '.join(present)}), and from_pretrained would load "
            f"{present[0]} (it prefers {', then '.join(_FROM_PRETRAINED_ORDER)}); remove or move away the one you "
            "do not use, so that the merge reads the weights you load")
    return present[0] if present else None


def _weight_map(folder: Path) -> dict[str, str]:
    """``{tensor name: shard file name}`` of the folder's weights (one entry per tensor)."""
    layout = weights_layout(folder)
    if layout in WEIGHTS_INDEX_NAMES:
        index_path = folder / layout
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointFormatError(f"{index_path} has no \"weight_map\" {{tensor name: shard file}}; it is "
                                        "not a weights index written by save_pretrained")
        return weight_map
    if layout is not None:
        with open_state_dict(folder / layout) as single:
            return dict.fromkeys(single, layout)
    raise CheckpointNotFoundError(
        f"{str(folder)!r} is a folder but holds no model weights: expected model.safetensors, sharded "
        f"model-*.safetensors with {SAFETENSORS_INDEX}, or pytorch_model*.bin (as save_pretrained writes them)")


class HFModelFolder(LazyStateDict):
    """Read-only ``{name: tensor}`` view of every weight shard of a model folder.

    ``config`` is the parsed ``config.json`` ({} when absent); :meth:`shard_of` tells which file holds an entry.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, file_backed=True)
        self._weight_map = _weight_map(folder)
        self._keys = list(self._weight_map)
        self._shards: dict[str, LazyStateDict] = {}
        for name in dict.fromkeys(self._weight_map.values()):
            shard_path = folder / name
            if not shard_path.is_file():
                raise CheckpointNotFoundError(f"{str(folder)!r}: its weights index names shard {name!r}, which is "
                                              "missing; the download or save is incomplete")
            self._shards[name] = open_state_dict(shard_path)
        for key, name in self._weight_map.items():
            if key not in self._shards[name]:
                raise CorruptCheckpointError(f"{str(folder)!r}: the weights index puts {key!r} in {name}, which "
                                             "does not hold it; the folder mixes files of different saves")
        config_path = folder / "config.json"
        self.config: dict[str, Any] = _read_json(config_path) if config_path.is_file() else {}

    def shard_of(self, key: str) -> str:
        try:
            return self._weight_map[key]
        except KeyError:
            raise self._missing(key) from None

    def _shard(self, key: str) -> LazyStateDict:
        return self._shards[self.shard_of(key)]

    def __getitem__(self, key: str) -> Tensor:
        return self._shard(key)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._weight_map

    def shape(self, key: str) -> torch.Size:
        return self._shard(key).shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._shard(key).dtype(key)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
