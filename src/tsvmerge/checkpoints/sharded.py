"""Writing a model folder as ``save_pretrained`` does: safetensors shards plus ``model.safetensors.index.json``.

The shard layout is planned from the entries' sizes alone, before any tensor is merged, so that each process of a
multi-process merge knows which shard files it writes and what their final names are, and any process can write
the index. Shards are filled in key order up to the size limit (an entry larger than the limit gets a shard of its
own); entries that must stay together (tied weights) are never split across shards.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from tsvmerge.checkpoints.hf_folder import SAFETENSORS_INDEX, model_files
from tsvmerge.checkpoints.state_dict import untied_contiguous

__all__ = ["ShardPlan", "copy_model_files", "parse_size", "plan_shards", "write_index", "write_shard"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in ``5GB`` (10⁹, as transformers counts), ``2GiB`` (2³⁰), ``500MB`` or a plain number of bytes."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.fullmatch(text)
        if match is None:
            raise ValueError(f"--max-shard-size {text!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
        size = int(float(match[1]) * _UNITS[(match[2] or "").upper()])
    if size <= 0:
        raise ValueError(f"--max-shard-size must be positive, got {text!r}")
    return size


@dataclass(frozen=True)
class ShardPlan:
    """Shard files (their keys, in write order), the process writing each, and the bytes of every entry."""

    shards: list[list[str]]
    owners: list[int]
    sizes: dict[str, int]

    @property
    def names(self) -> list[str]:
        count = len(self.shards)
        if count == 1:
            return ["model.safetensors"]
        return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]

    def owned_by(self, rank: int) -> list[int]:
        return [i for i, owner in enumerate(self.owners) if owner == rank]

    def weight_map(self) -> dict[str, str]:
        return {key: name for keys, name in zip(self.shards, self.names) for key in keys}


def plan_shards(sizes: Mapping[str, int], max_bytes: int, world_size: int = 1,
                together: Sequence[Sequence[str]] = ()) -> ShardPlan:
    """Split the entries (in ``sizes``' order) into ``world_size`` contiguous runs of about equal bytes, one per
    process, and each run into shards of at most ``max_bytes``; each group in ``together`` stays in one shard
    (placed where its first key is)."""
    grouped = {key: list(group) for group in together for key in group}
    units: list[list[str]] = []
    placed: set[str] = set()
    for key in sizes:
        if key in placed:
            continue
        unit = grouped.get(key, [key])
        units.append(unit)
        placed.update(unit)
    total = sum(sizes.values())
    shards: list[list[str]] = []
    owners: list[int] = []
    done, fill = 0, 0
    for unit in units:
        nbytes = sum(sizes[key] for key in unit)
        # The process whose share of the total bytes this unit starts in.
        rank = min(world_size - 1, done * world_size // total) if total else 0
        if not shards or owners[-1] != rank or (fill + nbytes > max_bytes and fill > 0):
            shards.append([])
            owners.append(rank)
            fill = 0
        shards[-1].extend(unit)
        fill += nbytes
        done += nbytes
    return ShardPlan(shards, owners, dict(sizes))


def write_shard(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """One safetensors shard (``format: pt`` metadata, as transformers expects); tied tensors are stored twice."""
    from safetensors.torch import save_file

    save_file(untied_contiguous(tensors), str(path), metadata={"format": "pt"})


def write_index(folder: Path, plan: ShardPlan) -> None:
    """``model.safetensors.index.json`` in transformers' format (none for a single-file model)."""
    if len(plan.shards) <= 1:
        return
    index = {"metadata": {"total_size": sum(plan.sizes.values())}, "weight_map": plan.weight_map()}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def copy_model_files(source: Path, dest: Path, dtype_name: str | None = None) -> list[str]:
    """Copy the base folder's config, generation config and tokenizer files; with ``dtype_name``, the config
    records the dtype the weights were written in."""
    copied = []
    for path in model_files(source):
        target = dest / path.name
        shutil.copyfile(path, target)
        copied.append(path.name)
    config_path = dest / "config.json"
    if dtype_name is not None and config_path.is_file():
        config = json.loads(config_path.read_text())
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype_name
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied
